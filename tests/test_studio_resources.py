"""The app's process-wide memos (studio/resources.py), outside a Streamlit server."""

from __future__ import annotations

import pytest
from eval_fixtures import (
    eval_single_thread,  # noqa: F401  (autouse: one torch thread)
    make_engine,
    write_tofu,
)

from msa_core.engine import Engine
from msa_core.eval import probe
from msa_core.eval.questions import load_question_sets
from msa_core.targets import Point
from studio import resources
from studio.resources import Memo, memoized_per_item


def test_memo_is_a_bounded_lru():
    memo = Memo(size=2)
    memo.put("a", 1)
    memo.put("b", 2)
    assert memo.get("a") == 1  # "a" is now the most recent
    memo.put("c", 3)
    assert memo.get("b") is None and memo.get("a") == 1 and memo.get("c") == 3


def test_only_the_missing_items_are_computed_in_one_batch():
    memo, calls = Memo(), []

    def compute(batch: list[str]) -> list[str]:
        calls.append(list(batch))
        return [q.upper() for q in batch]

    assert memoized_per_item(memo, ("fp", "qa"), ["a", "b"], compute) == ["A", "B"]
    assert memoized_per_item(memo, ("fp", "qa"), ["b", "c", "a"], compute) == ["B", "C", "A"]
    assert calls == [["a", "b"], ["c"]]
    # Another prefix (another model or point) is another set of entries.
    assert memoized_per_item(memo, ("fp", "raw"), ["a"], compute) == ["A"] and calls[-1] == ["a"]


@pytest.fixture(scope="module")
def two_dtype_engines(tmp_path_factory):
    """The same tiny experiment (with TOFU data) loaded in float32 and in bfloat16."""
    root = tmp_path_factory.mktemp("memo_dtypes")
    f32 = make_engine(root, tofu=write_tofu(root / "tofu"))
    bf16 = Engine.load(f32.experiment, device="cpu", dtype="bfloat16", cache_dir=root / "cache")
    return f32, bf16


def test_memos_are_keyed_by_the_model_settings_not_only_the_fingerprint(two_dtype_engines, monkeypatch):
    """Issue 16 case 5: a bf16 session is never shown a float32 session's answers, p(gold) or TRs."""
    f32, bf16 = two_dtype_engines
    assert f32.fingerprint == bf16.fingerprint and resources.model_key(f32) != resources.model_key(bf16)
    calls: list[tuple[str, str]] = []
    real = {n: getattr(probe, n) for n in ("generate_for", "gold_probabilities", "truth_ratio_values")}
    for name, fn in real.items():

        def counting(engine, *args, _fn=fn, _name=name, **kwargs):
            calls.append((_name, str(engine.dtype)))
            return _fn(engine, *args, **kwargs)

        monkeypatch.setattr(resources.core_probe, name, counting)
    item = next(iter(load_question_sets(f32.experiment.data).sets.values()))[0]
    qs, golds, at = [item.question], [item.answer], Point(1.5, 0.5)
    for eng in (f32, bf16, f32, bf16):  # the second round comes from the memo
        resources.answers(eng, at, qs, 4)
        resources.gold_probabilities(eng, at, qs, golds)
        resources.truth_ratio_values(eng, at, [item])
    assert calls == [(n, d) for d in ("torch.float32", "torch.bfloat16") for n in real]
    # each engine is shown its own values
    for eng in (f32, bf16):
        assert resources.answers(eng, at, qs, 4).texts == real["generate_for"](eng, at, qs, max_new_tokens=4).texts
        assert resources.gold_probabilities(eng, at, qs, golds) == real["gold_probabilities"](eng, at, qs, golds)
        assert resources.truth_ratio_values(eng, at, [item]) == real["truth_ratio_values"](eng, at, [item])


def test_a_stored_evaluation_is_shown_only_to_an_engine_with_its_settings(two_dtype_engines, cache_dir):
    f32, bf16 = two_dtype_engines
    at = Point(1.0, 1.0)
    res = resources.evaluation(f32, at, tier="fast", benchmark="tofu", subset=2)
    assert res.settings["model"]["dtype"] == "float32"
    stored = resources.stored_evaluation(f32, at, tier="fast", benchmark="tofu", subset=2)
    assert stored is not None and stored.settings_key == res.settings_key
    assert resources.stored_evaluation(bf16, at, tier="fast", benchmark="tofu", subset=2) is None
    assert resources.stored_evaluation(f32, at, tier="fast", benchmark="tofu", subset=3) is None


def test_only_the_first_session_after_a_restart_gets_the_last_experiment(cache_dir, tmp_path):
    resources._restart.clear()  # a fresh server process
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    for p in (first, second):
        p.write_text("name: x\n")
    resources.remember_experiment(str(first))
    resources.remember_experiment(str(second))  # the most recent
    assert resources.recent_experiments() == [str(second), str(first)]
    assert resources.experiment_after_restart() == str(second)
    assert resources.experiment_after_restart() is None  # later sessions start from their URL
    resources._restart.clear()
    second.unlink()  # a vanished file is never offered
    assert resources.experiment_after_restart() == str(first)
