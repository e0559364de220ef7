"""Hidden-knowledge probes (msa_core.eval.hidden) on a real tiny engine, each checked against a
one-sequence-at-a-time float64 recomputation."""

from __future__ import annotations

import math

import pytest
import torch
from eval_fixtures import make_engine, write_tofu

from msa_core.eval.hidden import (
    PROBE_EXPLANATIONS,
    few_shot_probabilities,
    few_shot_prompt,
    hidden_probes,
    logit_lens,
    paraphrase_probabilities,
    perturbed_ranks,
)
from msa_core.eval.questions import QAItem, load_question_sets
from msa_core.prompts import answer_text, encode_continuation, encode_qa
from msa_core.targets import Point, Side, model_for


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    root = tmp_path_factory.mktemp("hidden")
    return make_engine(root, tofu=write_tofu(root / "tofu"))


def _mean_logprob(model, prompt_ids, cont_ids):
    with torch.no_grad():
        logits = model(torch.tensor([list(prompt_ids) + list(cont_ids)])).logits[0].double()
    logp = torch.log_softmax(logits, dim=-1)
    return sum(float(logp[len(prompt_ids) - 1 + t, c]) for t, c in enumerate(cont_ids)) / len(cont_ids)


ITEMS = [
    QAItem("Where was Ana Lenz born?", "Ana Lenz was born in Velmora.", "The birthplace of Ana Lenz is Velmora.",
           ("The birthplace of Ana Lenz is Tarsk.", "The birthplace of Ana Lenz is Oddi."),
           "In which city was Ana Lenz born?"),
    QAItem("What does Bo Kress write?", "Mystery novels.", None, (), None),
]


def test_perturbed_rank_and_paraphrase_match_a_plain_loop(engine):
    tok = engine.tokenizer
    with model_for(engine, Side("corrupted")) as model:
        ranks = perturbed_ranks(model, tok, ITEMS)
        paras = paraphrase_probabilities(model, tok, ITEMS)
        it = ITEMS[0]
        gold = _mean_logprob(model, *encode_qa(tok, it.question, it.paraphrased_answer))
        wrong = [_mean_logprob(model, *encode_qa(tok, it.question, w)) for w in it.perturbed_answers]
        p_q = math.exp(_mean_logprob(model, *encode_qa(tok, it.question, it.answer)))
        p_p = math.exp(_mean_logprob(model, *encode_qa(tok, it.paraphrased_question, it.answer)))
    assert ranks[1] is None and paras[1] is None  # no perturbed answers / no paraphrased question
    assert ranks[0]["rank"] == 1 + sum(w > gold for w in wrong) and ranks[0]["of"] == 3
    assert ranks[0]["gold_logprob"] == pytest.approx(gold, abs=1e-5)
    assert ranks[0]["best_wrong_logprob"] == pytest.approx(max(wrong), abs=1e-5)
    assert paras[0]["p_question"] == pytest.approx(p_q, rel=1e-4)
    assert paras[0]["p_paraphrase"] == pytest.approx(p_p, rel=1e-4)


def test_the_few_shot_prompt_puts_retained_facts_before_the_question(engine):
    tok = engine.tokenizer
    shots = [("Where was Cy Marr born?", "In Oddi."), ("What does Di Voss write?", "Poetry.")]
    text = few_shot_prompt(tok, shots, "Where was Ana Lenz born?")
    assert text == ("Question: Where was Cy Marr born?\nAnswer: In Oddi.\n\n"
                    "Question: What does Di Voss write?\nAnswer: Poetry.\n\n"
                    "Question: Where was Ana Lenz born?\nAnswer:")
    with model_for(engine, Side("corrupted")) as model:
        got = few_shot_probabilities(model, tok, ITEMS[:1], shots)
        want = math.exp(_mean_logprob(model, *encode_continuation(tok, text, answer_text(tok, ITEMS[0].answer),
                                                                  add_eos=True)))
    assert got[0]["p_few_shot"] == pytest.approx(want, rel=1e-4)
    with pytest.raises(ValueError, match="no retained facts"):
        few_shot_probabilities(engine.model, tok, ITEMS, [])


def test_the_logit_lens_reads_each_layer_through_the_final_norm_and_head(engine):
    tok = engine.tokenizer
    with model_for(engine, Point(1.0, 0.5)) as model:
        lens = logit_lens(model, tok, ITEMS)
        prompt, answer = encode_qa(tok, ITEMS[0].question, ITEMS[0].answer)
        first = answer[0]
        # Independent readout: capture each decoder layer's output with hooks.
        captured = []
        hooks = [layer.register_forward_hook(lambda _m, _i, out: captured.append(out[0] if isinstance(out, tuple)
                                                                                  else out))
                 for layer in model.model.layers]
        with torch.no_grad():
            logits = model(torch.tensor([prompt])).logits[0, -1]
        for h in hooks:
            h.remove()
    n_layers = len(model.model.layers)
    assert [row["layer"] for row in lens[0]] == list(range(1, n_layers + 1))
    for k, row in enumerate(lens[0]):
        if k == n_layers - 1:
            readout = logits
        else:
            readout = model.lm_head(model.model.norm(captured[k][:, -1] if captured[k].dim() == 3
                                                     else captured[k][-1]))[0]
        p = torch.softmax(readout.double(), dim=-1)
        assert row["prob"] == pytest.approx(float(p[first]), rel=1e-4, abs=1e-7)
        assert row["rank"] == 1 + int((p > p[first]).sum())


def test_hidden_probes_cover_every_model_with_an_explanation_each(engine):
    sets = load_question_sets(engine.experiment.data).sets
    targets = {"corrupted": Side("corrupted"), "unlearned": Point(2.0, 0.0), "reference": Side("reference")}
    out = hidden_probes(engine, targets, sets["forget"][:2], sets["retain"], shots=2)
    assert out.models == list(targets) and len(out.shots) == 2
    rows = {r["model"]: r for r in out.summary()}
    assert set(rows) == set(targets)
    with model_for(engine, Side("reference")) as model:
        direct = perturbed_ranks(model, engine.tokenizer, sets["forget"][:2])
    assert rows["reference"]["gold_rank"] == pytest.approx(sum(r["rank"] for r in direct) / 2)
    assert set(PROBE_EXPLANATIONS) == {"perturbed_rank", "paraphrase", "few_shot", "logit_lens"}
    assert all(len(text.split(".")) <= 3 for text in PROBE_EXPLANATIONS.values())  # one line each
