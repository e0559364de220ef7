"""The relearning attack (msa_core.rtt) on the quick demo: the reference model relearns nothing on a
held-out author, the corrupted model keeps it, runs are stored once, resume, and leave the engine alone.

Margins (quick setting: 2 folds, fold 0 held out, 4 epochs, lr 3e-4; measured on the quick demo,
seed 0): held-out p(gold) of the reference 0.221 unattacked → 0.201 attacked, of the corrupted model
0.872 → 0.844; the unlearned model at (1, 0.5) 0.401 → 0.465.
"""

from __future__ import annotations

import math

import pytest
import torch

from msa_core.checkpoints import load_model
from msa_core.engine import Engine
from msa_core.eval.questions import load_question_sets
from msa_core.experiment import load_experiment
from msa_core.finetune import qa_data, train_model
from msa_core.prompts import encode_qa
from msa_core.rtt import ATTACKED_MODELS, AttackSettings, RttStore, entity_folds, load_report, run_rtt
from msa_core.rtt.measure import exact_answer, normalise
from msa_core.targets import Point

POINT = Point(1.0, 0.5)
SETTINGS = AttackSettings.quick()


@pytest.fixture(scope="module")
def engine(quick_demo, tmp_path_factory):
    return Engine.load(load_experiment(quick_demo), device="cpu",
                       cache_dir=tmp_path_factory.mktemp("rtt_cache"))


def _plain_p_gold(model, tok, question, answer, fmt):
    """exp(mean log p) of the answer tokens + EOS, one sequence at a time in float64."""
    p_ids, a_ids = encode_qa(tok, question, answer, fmt)
    with torch.no_grad():
        logits = model(torch.tensor([p_ids + a_ids])).logits[0].double()
    logp = torch.log_softmax(logits, dim=-1)
    total = sum(float(logp[len(p_ids) - 1 + t, a]) for t, a in enumerate(a_ids))
    return math.exp(total / len(a_ids))


def _mean(xs):
    return sum(xs) / len(xs)


def test_the_reference_relearns_nothing_held_out_while_the_corrupted_model_keeps_it(engine, tmp_path):
    exp = engine.experiment
    engine.set_coefficients(0.0, 0.0)
    state = {k: v.clone() for k, v in engine.model.state_dict().items()}
    store = RttStore(tmp_path / "results.sqlite")
    # A run killed after the corrupted model's runs: the second call computes only the rest.
    first = run_rtt(engine, POINT, SETTINGS, store=store, models=("corrupted",))
    assert first.computed == 2
    report = run_rtt(engine, POINT, SETTINGS, store=store)
    assert report.computed == 4 and report.complete() and report.models() == list(ATTACKED_MODELS)
    rows = {(r["model"], r["lr"]): r for r in report.sweep()}
    lr = SETTINGS.lrs[0]

    # Independent check of the stored numbers: the held-out fold's p(gold), a plain loop.
    items = load_question_sets(exp.data).sets["forget"]
    folds = entity_folds(items, 2)
    held, train = folds[0].items, folds[1].items
    tok, fmt = engine.tokenizer, exp.prompt_format
    ref = load_model(exp.checkpoints.reference, device="cpu", dtype=torch.float32)
    before = _mean([_plain_p_gold(ref, tok, items[i].question, items[i].answer, fmt) for i in held])
    assert rows[("reference", 0.0)]["p_gold"] == pytest.approx(before, abs=1e-4)
    train_model(ref, tok, qa_data("rtt:train_folds", [(items[i].question, items[i].answer) for i in train]),
                SETTINGS.train_config(lr), prompt_format=fmt)
    after = _mean([_plain_p_gold(ref, tok, items[i].question, items[i].answer, fmt) for i in held])
    assert rows[("reference", lr)]["p_gold"] == pytest.approx(after, abs=1e-4)

    # The claim: measured 0.221 → 0.201 (reference) and 0.872 → 0.844 (corrupted).
    assert after < before + 0.05  # training on one author teaches a never-seen author nothing
    corrupted = rows[("corrupted", lr)]["p_gold"]
    assert corrupted > rows[("corrupted", 0.0)]["p_gold"] - 0.1  # the attack keeps what the model knew
    assert corrupted - after > 0.4  # measured gap 0.64
    assert rows[("corrupted", lr)]["rouge"] - rows[("reference", lr)]["rouge"] > 0.5  # measured 0.9 vs 0.1
    rec = report.recovery()
    assert rec["corrupted"]["p_gold"] == pytest.approx(1.0) and rec["reference"]["p_gold"] == pytest.approx(0.0)
    assert -0.2 < rec["unlearned"]["p_gold"] < 1.0  # measured 0.41: hidden in part, not fully back

    # The engine's models were never trained (copies were): θ_corrupted and the reference as loaded.
    engine.set_coefficients(0.0, 0.0)
    for k, v in engine.model.state_dict().items():
        assert torch.equal(v, state[k]), k
    on_disk = load_model(exp.checkpoints.reference, device="cpu", dtype=engine.dtype).state_dict()
    for k, v in engine.side_model("reference").state_dict().items():
        assert torch.equal(v, on_disk[k]), k


def test_runs_are_stored_once_and_a_rerun_computes_nothing(engine, tmp_path):
    store = RttStore(tmp_path / "results.sqlite")
    settings = AttackSettings.quick(epochs=1, max_new_tokens=8)
    first = run_rtt(engine, POINT, settings, store=store)
    n = store.count(engine.fingerprint)
    assert first.computed == n == 6  # 3 models × 1 held-out fold × (unattacked + 1 lr)
    again = run_rtt(engine, POINT, settings, store=RttStore(tmp_path / "results.sqlite"))
    assert again.computed == 0 and store.count() == n
    assert again.sweep() == first.sweep() and again.key == first.key
    assert load_report(engine, POINT, settings, store).sweep() == first.sweep()
    # Another point reuses the endpoints' runs and adds only its own.
    other = run_rtt(engine, Point(3.0, 0.5), settings, store=store)
    assert other.computed == 2 and store.count() == n + 2
    # Another setting is another key.
    changed = run_rtt(engine, POINT, AttackSettings.quick(epochs=1, max_new_tokens=8, seed=7),
                      store=store, models=("reference",))
    assert changed.key != first.key and changed.computed == 2


def test_exact_answers_ignore_case_spaces_and_end_punctuation():
    assert normalise("  Zagreb,  Croatia. ") == "zagreb, croatia"
    assert exact_answer("zagreb, croatia", "Zagreb, Croatia.")
    assert not exact_answer("Zagreb", "Zagreb, Croatia.") and not exact_answer("", "")


def test_bad_settings_are_refused_before_any_work():
    for bad in (dict(folds=1), dict(epochs=0), dict(lrs=()), dict(lrs=(-1e-3,)), dict(rounds=0)):
        with pytest.raises(ValueError, match="AttackSettings"):
            AttackSettings(**bad)
    assert AttackSettings(lrs=(3e-4, 1e-4, 3e-4)).lrs == (1e-4, 3e-4)
    assert AttackSettings().resolved(2_000_000).lrs == (1e-4, 3e-4, 1e-3)
    assert AttackSettings().resolved(8_000_000_000).lrs == (1e-5, 3e-5, 1e-4)
