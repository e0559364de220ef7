"""Gradient-based unlearning baselines: the losses against a float64 hand computation, the paired
data, and run_baseline / ``msa baseline`` storing each epoch once (tiny models, CPU)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from eval_fixtures import make_model, write_muse, write_tofu
from tiny import build_tokenizer, make_checkpoints

from msa_core.baselines import BASELINE_CONFIG, default_out_dir, method_params, run_baseline
from msa_core.eval.store import ResultStore, method_model
from msa_core.experiment import Experiment, save_experiment
from msa_core.finetune.examples import IGNORE_INDEX, Example
from msa_core.finetune.trainer import make_objective
from msa_core.finetune.unlearn_data import (
    PairedCollator,
    add_reference_nll,
    pair_indices,
    paired_rows,
    unlearning_splits,
)
from msa_core.fingerprints import experiment_fingerprint

# Two forget and two retain sequences of different lengths (so padding is exercised); the first
# tokens of each are the "prompt" (label IGNORE_INDEX), the rest the trained answer.
FORGET = [Example([1, 5, 9, 14, 7, 2], [IGNORE_INDEX, IGNORE_INDEX, 9, 14, 7, 2]),
          Example([1, 8, 3, 11], [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 11])]
RETAIN = [Example([1, 4, 6, 2], [IGNORE_INDEX, 4, 6, 2]),
          Example([1, 12, 13, 10, 15, 3, 2], [IGNORE_INDEX, IGNORE_INDEX, 13, 10, 15, 3, 2])]


# transformers computes a causal LM's loss in float32 whatever the model's dtype (it upcasts the
# logits), so the float64 oracle agrees to float32 precision (~1e-7 relative per term).
ATOL = 1e-5  # losses here are O(1-10)


def _token_nlls(model: torch.nn.Module, ex: Example) -> list[float]:
    """Oracle: the NLL of every labelled token of one unpadded sequence, log-softmax by hand in float64."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ex.input_ids])).logits[0].double()
    out = []
    for t in range(1, len(ex.input_ids)):
        label = ex.labels[t]
        if label == IGNORE_INDEX:
            continue
        row = [float(x) for x in logits[t - 1]]
        top = max(row)
        log_z = top + math.log(sum(math.exp(x - top) for x in row))
        out.append(log_z - row[label])
    return out


def _mean_nll(model: torch.nn.Module, examples: list[Example]) -> float:
    """Oracle of the model's own loss on a batch: mean over every labelled token of the batch."""
    tokens = [x for ex in examples for x in _token_nlls(model, ex)]
    return sum(tokens) / len(tokens)


def _log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def _batch(rows: dict, ref: list[float] | None = None) -> dict[str, torch.Tensor]:
    items = [{k: rows[k][i] for k in rows} for i in range(len(rows["forget_input_ids"]))]
    batch = PairedCollator(0)(items)
    if ref is not None:
        batch["forget_ref_nll"] = torch.tensor(ref, dtype=torch.float64)
    return batch


@pytest.fixture
def models():
    tok = build_tokenizer()
    return make_model(len(tok), seed=0).double(), make_model(len(tok), seed=1).double()


def _pairs() -> dict:
    """forget i paired with RETAIN[i] (fixed here; pairing itself is tested apart)."""
    return {"forget_input_ids": [e.input_ids for e in FORGET], "forget_labels": [e.labels for e in FORGET],
            "retain_input_ids": [e.input_ids for e in RETAIN], "retain_labels": [e.labels for e in RETAIN]}


def test_grad_diff_loss_equals_hand_computed(models):
    model, _ = models
    batch = _batch(_pairs())
    want = 0.7 * -_mean_nll(model, FORGET) + 1.3 * _mean_nll(model, RETAIN)
    got = make_objective("GradDiff", {"forget_weight": 0.7, "retain_weight": 1.3})(model, batch, None)
    assert float(got.detach()) == pytest.approx(want, abs=ATOL)
    default = make_objective("GradDiff")(model, batch, None)
    assert float(default.detach()) == pytest.approx(-_mean_nll(model, FORGET) + _mean_nll(model, RETAIN), abs=ATOL)


def test_npo_loss_equals_hand_computed(models):
    model, ref_model = models
    sums = [sum(_token_nlls(model, ex)) for ex in FORGET]
    ref_sums = [sum(_token_nlls(ref_model, ex)) for ex in FORGET]
    beta, gamma, alpha = 0.5, 0.9, 1.1
    forget = -(2 / beta) * sum(_log_sigmoid(beta * (s - r)) for s, r in zip(sums, ref_sums)) / len(sums)
    want = gamma * forget + alpha * _mean_nll(model, RETAIN)
    batch = _batch(_pairs(), ref_sums)
    got = make_objective("NPO", {"beta": beta, "forget_weight": gamma, "retain_weight": alpha})(model, batch, None)
    assert float(got.detach()) == pytest.approx(want, abs=ATOL)
    # At the reference itself the forget term is (2/β)·log 2 whatever the data (σ(0) = 1/2).
    same = make_objective("NPO", {"beta": 0.1, "retain_weight": 0.0})(model, _batch(_pairs(), sums), None)
    assert float(same.detach()) == pytest.approx(20 * math.log(2), abs=ATOL)


def test_grad_ascent_is_the_negated_forget_nll_and_raises_it(models):
    model, _ = models
    batch = _batch(_pairs())
    loss = make_objective("GradAscent")(model, batch, None)
    before = _mean_nll(model, FORGET)
    assert float(loss.detach()) == pytest.approx(-before, abs=ATOL)
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p -= 1e-3 * p.grad  # one descent step on the objective
    assert _mean_nll(model, FORGET) > before  # … is an ascent step on the forget NLL


def test_reference_nll_column_is_the_summed_answer_nll(models):
    model, _ = models
    rows = add_reference_nll(model, paired_rows(FORGET, RETAIN), pad_id=0, batch_size=1)
    want = [sum(_token_nlls(model, ex)) for ex in FORGET]
    assert rows["forget_ref_nll"] == pytest.approx(want, rel=1e-9)


def test_objective_parameters_are_checked():
    with pytest.raises(ValueError, match="takes no parameter beta"):
        make_objective("GradDiff", {"beta": 0.1})
    with pytest.raises(ValueError, match="beta must be > 0"):
        make_objective("NPO", {"beta": 0.0})
    with pytest.raises(KeyError, match="forget_ref_nll"):
        make_objective("NPO")(make_model(20), _batch({"forget_input_ids": [[1, 2]], "forget_labels": [[1, 2]]}),
                              None)
    assert method_params("GradAscent") == {}
    assert method_params("NPO", npo_beta=0.2) == {"forget_weight": 1.0, "retain_weight": 1.0, "beta": 0.2}


def test_pairing_is_seeded_and_collator_masks_padding():
    assert pair_indices(50, 7, seed=3) == pair_indices(50, 7, seed=3)
    assert pair_indices(50, 7, seed=3) != pair_indices(50, 7, seed=4)
    assert set(pair_indices(200, 7)) == set(range(7))
    rows = paired_rows(FORGET, RETAIN, seed=5)
    partner = pair_indices(2, 2, seed=5)
    assert rows["retain_input_ids"] == [RETAIN[j].input_ids for j in partner]
    batch = PairedCollator(0)([{k: rows[k][i] for k in rows} for i in range(2)])
    assert batch["forget_input_ids"].tolist()[1] == [1, 8, 3, 11, 0, 0]
    assert batch["forget_attention_mask"].tolist()[1] == [1, 1, 1, 1, 0, 0]
    assert batch["forget_labels"].tolist()[1] == [IGNORE_INDEX] * 3 + [11] + [IGNORE_INDEX] * 2
    assert "retain_input_ids" not in PairedCollator(0)([{"forget_input_ids": [1, 2], "forget_labels": [1, 2]}])


# ---------------------------------------------------------------- run_baseline and the CLI


@pytest.fixture
def tofu_exp(tmp_path) -> Experiment:
    exp = make_checkpoints(tmp_path / "ckpt", seed=4)
    exp = dataclasses.replace(exp, data=dataclasses.replace(exp.data, tofu=write_tofu(tmp_path / "tofu")))
    save_experiment(exp, tmp_path / "ckpt" / "experiment.yaml")
    return exp


CONFIG = dataclasses.replace(BASELINE_CONFIG, epochs=2, batch_size=2, grad_accum=1, lr=1e-3)


def _method_rows(store: ResultStore, fp: str) -> list[tuple[str, str]]:
    grid = store.method_grid(fp)
    return sorted(zip(grid["method"], grid["point"]))


def test_unlearning_splits_fall_back_to_the_experiment_retain_split(tofu_exp, tmp_path):
    assert unlearning_splits(tofu_exp) == ("forget10_perturbed", "retain_perturbed")
    (tmp_path / "tofu" / "retain90.json").write_text(json.dumps([{"question": "q?", "answer": "a."}]))
    assert unlearning_splits(tofu_exp) == ("forget10_perturbed", "retain90")


def test_run_baseline_stores_each_epoch_once_and_reruns_nothing(tofu_exp, tmp_path, cache_dir):
    from msa_core.engine import Engine
    from msa_core.eval.run import evaluate

    store = ResultStore(tmp_path / "results.sqlite")
    fp = experiment_fingerprint(tofu_exp)
    first = run_baseline(tofu_exp, "GradDiff", CONFIG, store=store, device="cpu", cache_dir=cache_dir)
    assert first.trained and first.evaluated == ["epoch-1", "epoch-2"] and first.reused_points == []
    assert first.out.parent == default_out_dir(fp, "GradDiff", first.key_hash, cache_dir).parent
    assert [p.name for p in first.epoch_dirs] == ["epoch-1", "epoch-2"]
    assert _method_rows(store, fp) == [("GradDiff", "epoch-1"), ("GradDiff", "epoch-2")]
    # The two epochs are different models, and unlearning raised the forget NLL (lowered its probability).
    p1, p2 = (p.get("forget_prob") for p in first.points)
    assert p1 != p2
    card = json.loads((first.out / "msa_finetune.json").read_text())
    assert card["config"]["objective"] == "GradDiff"
    assert [d["role"] for d in card["data"]] == ["forget", "retain"]
    assert card["epoch_losses"][-1] < card["epoch_losses"][0]

    # Forget quality against the same reference statistics as a composed point of the experiment.
    engine = Engine.load(tofu_exp, device="cpu", cache_dir=cache_dir)
    composed = evaluate(engine, 0.0, 0.0, store=store)
    stored = first.points[0].settings
    assert stored["reference"] == composed.settings["reference"]
    assert stored["model"] == composed.settings["model"]
    assert first.points[0].get("forget_quality") is not None

    weights = first.epoch_dirs[0] / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    rows = store.count()
    again = run_baseline(tofu_exp, "GradDiff", CONFIG, store=store, device="cpu", cache_dir=cache_dir)
    assert not again.trained and again.evaluated == [] and again.reused_points == ["epoch-1", "epoch-2"]
    assert store.count() == rows and weights.stat().st_mtime_ns == mtime
    assert [p.to_json() for p in again.points] == [p.to_json() for p in first.points]

    # Other hyper-parameters: another training folder, other rows (the stored key covers training).
    other = run_baseline(tofu_exp, "GradDiff", dataclasses.replace(CONFIG, epochs=1), store=store, device="cpu",
                         cache_dir=cache_dir)
    assert other.trained and other.out != first.out and other.evaluated == ["epoch-1"]
    assert other.points[0].settings_key != first.points[0].settings_key
    assert store.count() == rows + 1


def test_run_baseline_rejects_bad_inputs(tofu_exp, tmp_path):
    store = ResultStore(tmp_path / "results.sqlite")
    with pytest.raises(ValueError, match="unknown baseline method 'SimNPO'"):
        run_baseline(tofu_exp, "SimNPO", CONFIG, store=store)
    muse_only = dataclasses.replace(tofu_exp, data=dataclasses.replace(tofu_exp.data, tofu=None,
                                                                       muse=write_muse(tmp_path / "muse")))
    with pytest.raises(ValueError, match="train on TOFU data; the experiment file has no data.tofu folder"):
        run_baseline(muse_only, "NPO", CONFIG, store=store, device="cpu")
    with pytest.raises(ValueError, match="benchmark 'muse' asked for"):
        run_baseline(tofu_exp, "NPO", CONFIG, store=store, benchmark="muse")
    assert store.count() == 0


def test_cli_baseline_npo_smoke(tofu_exp, tmp_path, cache_dir, capsys):
    from msa_core.cli import main

    yaml = Path(tofu_exp.checkpoints.corrupted).parent / "experiment.yaml"
    db = tmp_path / "cli.sqlite"
    argv = ["baseline", "NPO", str(yaml), "--epochs", "1", "--batch-size", "3", "--grad-accum", "1", "--lr", "1e-3",
            "--device", "cpu", "--store", str(db), "--json", "-", "--quiet"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["trained"] and out["evaluated"] == ["epoch-1"] and len(out["points"]) == 1
    assert out["points"][0]["model"] == method_model("NPO", "epoch-1")
    assert out["config"]["objective"] == "NPO" and out["config"]["batch_size"] == 3
    card = json.loads((Path(out["out"]) / "msa_finetune.json").read_text())
    assert card["key"]["objective_params"] == {"forget_weight": 1.0, "retain_weight": 1.0, "beta": 0.1}
    assert main(argv) == 0
    again = json.loads(capsys.readouterr().out)
    assert not again["trained"] and again["evaluated"] == [] and again["reused_points"] == ["epoch-1"]
    assert _method_rows(ResultStore(db), experiment_fingerprint(tofu_exp)) == [("NPO", "epoch-1")]
    assert main(["baseline", "NPO", str(yaml), "--epochs", "0", "--store", str(db), "--quiet"]) == 2
    assert "epochs must be an integer >= 1" in capsys.readouterr().err


def test_finetune_refuses_a_paired_objective(tmp_path):
    from msa_core.finetune import TrainConfig, finetune, qa_data

    with pytest.raises(ValueError, match="objective 'GradDiff' trains on paired forget/retain batches"):
        finetune(tmp_path / "base", qa_data("x", [("q?", "a.")]), tmp_path / "out", TrainConfig(objective="GradDiff"))
    assert not (tmp_path / "out").exists()
