"""Batched teacher-forced scoring: equals scoring alone, masks prompt and padding, counts EOS."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from eval_fixtures import (
    eval_single_thread,  # noqa: F401  (autouse: one torch thread)
    make_model,
    make_tokenizer,
)

from msa_core.eval.scoring import PairBook, answer_probabilities, score_pairs, truth_ratios
from msa_core.prompts import encode_qa

QA = [
    ("Where was Ana Lenz born?", "Ana Lenz was born in Velmora."),
    ("Q?", "A"),
    (
        "What genre does Bo Kress write, and for which publisher in which decade?",
        "Mystery novels, mostly for Ravel Press.",
    ),
    ("Who?", "Bo Kress writes mystery novels and the quick brown fox jumps over the lazy dog twice."),
]
ALL = ("token_logprobs", "argmax", "vocab_stats")


@pytest.fixture(scope="module")
def eval_tok():
    return make_tokenizer()


@pytest.fixture(scope="module")
def eval_model(eval_tok):
    return make_model(len(eval_tok), seed=3)


def _direct(model, prompt, cont):
    """Independent reference: HF's own masked loss plus a full-vocabulary log-softmax, one sequence."""
    ids = torch.tensor([prompt + cont])
    labels = torch.tensor([[-100] * len(prompt) + cont])
    with torch.no_grad():
        out = model(input_ids=ids, labels=labels)
    logp = torch.log_softmax(out.logits[0, len(prompt) - 1 : -1].double(), -1)
    tgt = torch.tensor(cont)
    tok_lp = logp.gather(-1, tgt[:, None])[:, 0]
    p = logp.exp()
    mu = (p * logp).sum(-1)
    var = (p * logp**2).sum(-1) - mu**2
    return float(out.loss), tok_lp.numpy(), (logp.argmax(-1) == tgt).numpy(), mu.numpy(), var.numpy()


@pytest.mark.parametrize("side", ["right", "left"])
def test_batched_equals_alone_mixed_lengths(eval_model, eval_tok, side):
    pairs = [encode_qa(eval_tok, q, a) for q, a in QA]
    assert len({len(p) + len(c) for p, c in pairs}) == len(pairs)  # genuinely mixed lengths
    batched = score_pairs(eval_model, eval_tok, pairs, batch_size=3, want=ALL, padding_side=side)
    for i, pair in enumerate(pairs):
        alone = score_pairs(eval_model, eval_tok, [pair], want=ALL)
        assert batched.nll[i] == pytest.approx(alone.nll[0], abs=1e-5)
        np.testing.assert_allclose(batched.token_logprobs[i], alone.token_logprobs[0], atol=1e-5)
        np.testing.assert_array_equal(batched.argmax_correct[i], alone.argmax_correct[0])
        np.testing.assert_allclose(batched.mu[i], alone.mu[0], atol=1e-5)
        np.testing.assert_allclose(batched.var[i], alone.var[0], atol=1e-5)


def test_matches_independent_computation_and_counts_eos(eval_model, eval_tok):
    pairs = [encode_qa(eval_tok, q, a) for q, a in QA]
    for _prompt, c in pairs:
        assert c[-1] == eval_tok.eos_token_id  # EOS is an answer token
    sc = score_pairs(eval_model, eval_tok, pairs, batch_size=4, want=ALL)
    for i, (p, c) in enumerate(pairs):
        loss, lp, ok, mu, var = _direct(eval_model, p, c)
        assert sc.n_tokens[i] == len(c)
        assert sc.nll[i] == pytest.approx(loss, abs=1e-5)
        assert sc.nll[i] == pytest.approx(-lp.mean(), abs=1e-5)
        np.testing.assert_allclose(sc.token_logprobs[i], lp, atol=1e-5)
        np.testing.assert_array_equal(sc.argmax_correct[i], ok)
        np.testing.assert_allclose(sc.mu[i], mu, atol=1e-5)
        np.testing.assert_allclose(sc.var[i], var, atol=1e-5)
        assert sc.prob[i] == pytest.approx(math.exp(-loss), rel=1e-5)


def test_prompt_is_masked(eval_model, eval_tok):
    """Changing only the prompt's padding/batch-mates never changes a score; changing the prompt does."""
    p, c = encode_qa(eval_tok, *QA[0])
    a = score_pairs(eval_model, eval_tok, [(p, c)]).nll[0]
    b = score_pairs(eval_model, eval_tok, [(p, c), (p + p, c)], batch_size=2).nll
    assert b[0] == pytest.approx(a, abs=1e-6)
    assert abs(b[1] - a) > 1e-4  # a different context gives a different continuation score


def test_empty_prompt_and_truncation(eval_model, eval_tok):
    cont = list(range(5, 25))
    sc = score_pairs(eval_model, eval_tok, [([], cont)], want=("token_logprobs",))
    assert sc.n_tokens == [19]  # first token becomes the context
    long = score_pairs(eval_model, eval_tok, [([1] * 10, cont)], max_length=12)
    assert long.n_tokens == [11]  # head of the continuation kept, prompt cut to 1 token
    with pytest.raises(ValueError, match="pair 0"):
        score_pairs(eval_model, eval_tok, [([1, 2], [])])
    with pytest.raises(ValueError, match="unknown statistics"):
        score_pairs(eval_model, eval_tok, [([1], [2])], want=("bogus",))


def test_pair_book_deduplicates():
    book = PairBook()
    assert book.add([1, 2], [3]) == 0
    assert book.add([1, 2], [4]) == 1
    assert book.add((1, 2), (3,)) == 0
    assert len(book) == 2


def test_answer_probabilities_and_truth_ratios(eval_model, eval_tok):
    qs, ans = zip(*QA[:2])
    probs = answer_probabilities(eval_model, eval_tok, list(qs), list(ans))
    for (q, a), p in zip(QA[:2], probs):
        loss = _direct(eval_model, *encode_qa(eval_tok, q, a))[0]
        assert p == pytest.approx(math.exp(-loss), rel=1e-5)
    item = {
        "question": QA[0][0],
        "paraphrased_answer": "Velmora is where Ana Lenz was born.",
        "perturbed_answer": ["Paris is where Ana Lenz was born.", "Riga is where Ana Lenz was born."],
    }
    tr = truth_ratios(eval_model, eval_tok, [item])[0]
    n_true = _direct(eval_model, *encode_qa(eval_tok, item["question"], item["paraphrased_answer"]))[0]
    n_w = [_direct(eval_model, *encode_qa(eval_tok, item["question"], w))[0] for w in item["perturbed_answer"]]
    assert tr == pytest.approx(math.exp(-np.mean(n_w)) / math.exp(-n_true), rel=1e-4)
    with pytest.raises(KeyError, match="item 0"):
        truth_ratios(eval_model, eval_tok, [{"question": "q", "answer": "a"}])
