"""Batched generation: left padding gives the same answers as one prompt at a time."""

from __future__ import annotations

import pytest

from msa_core.checkpoints import load_model, load_tokenizer
from msa_core.generation import cut_at_stops, generate_answers, generate_text
from msa_core.prompts import encode_qa, qa_prompt


@pytest.fixture
def model_tok(tiny_experiment):
    folder = tiny_experiment.checkpoints.corrupted
    return load_model(folder), load_tokenizer(folder)


def test_batched_equals_single(model_tok):
    model, tok = model_tok
    qs = ["Where was Ana Lenz born?", "What genre?", "Who wrote the quick brown fox story and why?"]
    batched = generate_answers(model, tok, qs, max_new_tokens=6, batch_size=3)
    single = [generate_answers(model, tok, [q], max_new_tokens=6)[0] for q in qs]
    assert batched == single


def test_seeded_sampling_is_reproducible(model_tok):
    model, tok = model_tok
    a = generate_text(model, tok, ["The quick"], max_new_tokens=8, do_sample=True, seed=7)
    b = generate_text(model, tok, ["The quick"], max_new_tokens=8, do_sample=True, seed=7)
    assert a == b


def test_plain_prompt_format(model_tok):
    _, tok = model_tok
    assert qa_prompt(tok, "Q?") == "Question: Q?\nAnswer:"
    p, a = encode_qa(tok, "Q?", "A.")
    assert a[-1] == tok.eos_token_id and p[0] == tok.bos_token_id
    assert tok.decode(p + a, skip_special_tokens=True) == "Question: Q?\nAnswer: A."


def test_cut_at_stops():
    assert cut_at_stops("Paris\n\nQuestion: x", ["\n\n", "\nQuestion"]) == "Paris"
    assert cut_at_stops("no stop", ["\n\n"]) == "no stop"


def test_bad_arguments(model_tok):
    model, tok = model_tok
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate_text(model, tok, ["x"], max_new_tokens=0)


def test_overlong_prompts_are_refused_not_truncated(model_tok):
    from msa_core.generation import MAX_PROMPT_CHARS

    model, tok = model_tok
    long = "x" * (MAX_PROMPT_CHARS + 1)
    with pytest.raises(ValueError, match=rf"^prompt 1 is {MAX_PROMPT_CHARS + 1} characters long; the limit is "
                                         rf"{MAX_PROMPT_CHARS} \(it is not truncated\)$"):
        generate_text(model, tok, ["fine", long], max_new_tokens=1)
    with pytest.raises(ValueError, match=r"^prompt 0 is 101 characters long; the limit is 100"):
        generate_answers(model, tok, ["q" * 101], max_new_tokens=1, max_prompt_chars=100)
    # exactly at the limit is accepted; callers with long data may lift the limit
    assert len(generate_text(model, tok, ["y" * 100], max_new_tokens=1, max_prompt_chars=100)) == 1
    assert len(generate_text(model, tok, ["z" * 300], max_new_tokens=1, max_prompt_chars=None)) == 1
