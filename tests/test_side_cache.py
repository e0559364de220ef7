"""msa_core.side_cache: side-model answers, p(gold), truth ratios and the reference evaluation from
the disk cache — counted model loads and generate calls, also from a new engine; every setting that
changes an output misses; answers equal direct generation; a damaged cache file is rebuilt."""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest
from eval_fixtures import (
    eval_single_thread,  # noqa: F401  (autouse: one torch thread)
    make_engine,
    write_tofu,
)

from msa_core import generation, side_cache
from msa_core.checkpoints import load_model
from msa_core.engine import Engine
from msa_core.eval import probe
from msa_core.eval.questions import load_question_sets
from msa_core.eval.run import reference_result as run_reference_result
from msa_core.eval.store import ResultStore
from msa_core.generation import generate_answers
from msa_core.targets import Point, Side

QUESTIONS = ["Who wrote the red book?", "Where was the author born?", "What is the title?", "When did it start?"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("side_cache")
    engine = make_engine(root, tofu=write_tofu(root / "tofu"))
    return root, engine


def new_engine(engine: Engine, root) -> Engine:
    """A fresh engine over the same checkpoints: what a new process would load."""
    return Engine.load(engine.experiment, device="cpu", cache_dir=root / "cache")


@pytest.fixture
def counted(monkeypatch):
    """Counts generate calls (prompts per call) and side-model loads (role per call)."""
    calls = {"generate": [], "loads": []}
    real_generate, real_load = generation.generate_answers, Engine.side_model

    def generate(model, tok, questions, **kw):
        calls["generate"].append(len(questions))
        return real_generate(model, tok, questions, **kw)

    def side_model(self, role):
        if role not in self.loaded_side_models():
            calls["loads"].append(role)
        return real_load(self, role)

    monkeypatch.setattr(generation, "generate_answers", generate)
    monkeypatch.setattr(Engine, "side_model", side_model)
    return calls


def direct_answers(engine: Engine, role: str, questions: list[str], max_new_tokens: int) -> list[str]:
    """The role's answers from its own freshly loaded model, one question at a time (no batching)."""
    model = load_model(getattr(engine.experiment.checkpoints, role), device="cpu", dtype=engine.dtype)
    return [generate_answers(model, engine.tokenizer, [q], max_new_tokens=max_new_tokens,
                             prompt_format=engine.experiment.prompt_format)[0] for q in questions]


def test_second_request_needs_no_model_also_in_a_new_engine(setup, tmp_path, counted):
    root, engine = setup
    cache = tmp_path / "c"
    first = side_cache.side_answers(engine, "clean", QUESTIONS, max_new_tokens=6, cache_dir=cache, free_after=True)
    assert first == direct_answers(engine, "clean", QUESTIONS, 6)
    assert counted["generate"] == [4] and counted["loads"] == ["clean"]
    assert "clean" not in engine.loaded_side_models()  # freed after generating
    assert side_cache.cached_count(cache) == 4

    again = side_cache.side_answers(engine, "clean", QUESTIONS, max_new_tokens=6, cache_dir=cache, free_after=True)
    fresh = new_engine(engine, root)
    other = side_cache.side_answers(fresh, "clean", list(reversed(QUESTIONS)), max_new_tokens=6, cache_dir=cache)
    assert again == first and other == list(reversed(first))
    assert counted["generate"] == [4] and counted["loads"] == ["clean"]  # no model call for either
    assert fresh.loaded_side_models() == []


def test_a_partial_hit_generates_only_the_missing_questions(setup, tmp_path, counted):
    _, engine = setup
    cache = tmp_path / "c"
    side_cache.side_answers(engine, "reference", QUESTIONS[:2], max_new_tokens=5, cache_dir=cache)
    both = side_cache.side_answers(engine, "reference", QUESTIONS + QUESTIONS[3:], max_new_tokens=5, cache_dir=cache)
    assert counted["generate"] == [2, 2]  # the second call asked only the two new questions (once each)
    expected = direct_answers(engine, "reference", QUESTIONS, 5)
    assert both == expected + expected[3:]


def test_every_setting_that_changes_an_answer_misses(setup, tmp_path, counted, monkeypatch):
    _, engine = setup
    cache = tmp_path / "c"
    q = QUESTIONS[:2]
    base = side_cache.side_answers(engine, "clean", q, max_new_tokens=6, cache_dir=cache)
    side_cache.side_answers(engine, "clean", q, max_new_tokens=3, cache_dir=cache)  # another length
    side_cache.side_answers(engine, "clean", q, max_new_tokens=6, raw=True, cache_dir=cache)  # raw continuation
    side_cache.side_answers(engine, "forget", q, max_new_tokens=6, cache_dir=cache)  # another checkpoint
    assert len(counted["generate"]) == 3  # (raw goes through generate_text, not counted here)
    assert side_cache.cached_count(cache) == 8

    # another prompt format (a chat template): a miss, and the answers are those of that format
    monkeypatch.setattr(engine.tokenizer, "chat_template",
                        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
                        "{% if add_generation_prompt %}<assistant>{% endif %}", raising=False)
    monkeypatch.setattr(engine, "experiment", replace(engine.experiment, prompt_format="chat"))
    chat = side_cache.side_answers(engine, "clean", q, max_new_tokens=6, cache_dir=cache)
    assert len(counted["generate"]) == 4
    assert chat == direct_answers(engine, "clean", q, 6)
    monkeypatch.undo()
    assert side_cache.side_answers(engine, "clean", q, max_new_tokens=6, cache_dir=cache) == base

    # the model dtype and device are part of the key
    plain = side_cache.output_settings(engine, "clean", "answer", max_new_tokens=6)
    monkeypatch.setattr(Engine, "model_settings", property(lambda self: {"dtype": "bfloat16", "device": "cpu",
                                                                         "module_filter": None}))
    bf16 = side_cache.output_settings(engine, "clean", "answer", max_new_tokens=6)
    assert side_cache.output_key(plain)[0] != side_cache.output_key(bf16)[0] and bf16["dtype"] == "bfloat16"


def test_probabilities_and_truth_ratios_are_cached_and_equal_the_direct_values(setup, tmp_path, counted):
    root, engine = setup
    engine.release_side_model("reference")  # loaded by an earlier test of this module's engine
    cache = tmp_path / "c"
    items = load_question_sets(engine.experiment.data).sets["forget"][:3]
    qs, golds = [it.question for it in items], [it.answer for it in items]
    p = side_cache.side_gold_probabilities(engine, "reference", qs, golds, cache_dir=cache, free_after=True)
    tr = side_cache.side_truth_ratios(engine, "reference", items, cache_dir=cache, free_after=True)
    assert counted["loads"] == ["reference", "reference"]  # freed after each
    assert p == pytest.approx(probe.gold_probabilities(engine, Side("reference"), qs, golds), rel=1e-6)
    assert tr == pytest.approx(probe.truth_ratio_values(engine, Side("reference"), items), rel=1e-6)
    engine.release_side_model("reference")

    fresh = new_engine(engine, root)
    loads = len(counted["loads"])
    assert side_cache.side_gold_probabilities(fresh, "reference", qs, golds, cache_dir=cache) == p
    assert side_cache.side_truth_ratios(fresh, "reference", items, cache_dir=cache) == tr
    assert len(counted["loads"]) == loads and fresh.loaded_side_models() == []
    # another gold answer is another item
    side_cache.side_gold_probabilities(fresh, "reference", qs[:1], ["something else"], cache_dir=cache)
    assert len(counted["loads"]) == loads + 1


def test_free_after_false_keeps_the_model_and_corrupted_is_the_engine_itself(setup, tmp_path, counted):
    _, engine = setup
    cache = tmp_path / "c"
    side_cache.side_answers(engine, "retain", QUESTIONS[:1], max_new_tokens=4, cache_dir=cache, free_after=False)
    assert "retain" in engine.loaded_side_models()
    engine.release_side_model("retain")
    got = side_cache.side_answers(engine, "corrupted", QUESTIONS[:2], max_new_tokens=4, cache_dir=cache)
    assert got == direct_answers(engine, "corrupted", QUESTIONS[:2], 4)
    assert "corrupted" not in counted["loads"] and (engine.alpha, engine.beta) == (0.0, 0.0)


def test_unknown_role_and_missing_checkpoint_are_named(setup, tmp_path, monkeypatch):
    _, engine = setup
    with pytest.raises(ValueError, match="'working'"):
        side_cache.side_answers(engine, "working", QUESTIONS, max_new_tokens=4, cache_dir=tmp_path)
    monkeypatch.setattr(engine, "experiment", replace(
        engine.experiment, checkpoints=replace(engine.experiment.checkpoints, reference=None)))
    with pytest.raises(KeyError, match="no reference checkpoint"):
        side_cache.side_answers(engine, "reference", QUESTIONS, max_new_tokens=4, cache_dir=tmp_path)


def test_a_damaged_cache_file_is_set_aside_and_rebuilt(setup, tmp_path, counted, caplog):
    _, engine = setup
    cache = tmp_path / "c"
    cache.mkdir()
    path = side_cache.cache_path(cache)
    garbage = b"\x00garbage, not a database\xff" * 100
    path.write_bytes(garbage)
    with caplog.at_level(logging.WARNING, logger="msa_core.side_cache"):
        first = side_cache.side_answers(engine, "clean", QUESTIONS[:2], max_new_tokens=4, cache_dir=cache)
    assert "damaged" in caplog.text and str(path) in caplog.text
    aside = list(cache.glob(f"{side_cache.CACHE_FILE}.damaged-*"))
    assert [p.read_bytes() for p in aside] == [garbage]  # kept, not deleted
    assert first == direct_answers(engine, "clean", QUESTIONS[:2], 4)
    assert side_cache.cached_count(cache) == 2

    # damaged again while this process uses it (a valid header, a broken body): rebuilt again
    path.write_bytes(path.read_bytes()[:100] + b"\xff" * 4000)
    for suffix in ("-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="msa_core.side_cache"):
        again = side_cache.side_answers(engine, "clean", QUESTIONS[:2], max_new_tokens=4, cache_dir=cache)
    assert again == first and "damaged" in caplog.text
    assert len(counted["generate"]) == 2 and side_cache.cached_count(cache) == 2

    # cleared: the next request generates again
    assert side_cache.clear_cache(cache) == 2 and side_cache.cached_count(cache) == 0
    side_cache.side_answers(engine, "clean", QUESTIONS[:2], max_new_tokens=4, cache_dir=cache)
    assert len(counted["generate"]) == 3 and side_cache.clear_cache(tmp_path / "nothing-here") == 0


def test_reference_metrics_come_from_the_store_without_loading_the_model(setup, tmp_path, counted):
    root, engine = setup
    store = ResultStore(tmp_path / "results.sqlite")
    direct = run_reference_result(engine, benchmark="tofu", subset=3, store=store)
    engine.release_side_model("reference")
    loads = len(counted["loads"])

    fresh = new_engine(engine, root)
    got = side_cache.reference_result(fresh, benchmark="tofu", subset=3, store=store)
    assert len(counted["loads"]) == loads and fresh.loaded_side_models() == []
    assert got.settings_key == direct.settings_key
    assert {k: v.value for k, v in got.metrics.items()} == {k: v.value for k, v in direct.metrics.items()}

    # not stored yet: evaluated once (the same numbers as run.reference_result), stored, the model freed
    other = ResultStore(tmp_path / "other.sqlite")
    computed = side_cache.reference_result(fresh, benchmark="tofu", subset=3, store=other, free_after=True)
    assert len(counted["loads"]) == loads + 1 and fresh.loaded_side_models() == []
    assert computed.settings_key == direct.settings_key
    for name, metric in direct.metrics.items():
        assert computed.metrics[name].value == pytest.approx(metric.value, rel=1e-6, nan_ok=True)
    assert other.get(f"{fresh.fingerprint}#reference", 0.0, 0.0, "fast", direct.settings_key) is not None


def test_the_app_reads_side_answers_through_the_disk_cache(setup, cache_dir, counted, monkeypatch):
    from studio import resources

    root, engine = setup
    memos: dict[str, resources.Memo] = {}
    monkeypatch.setattr(resources, "memo", lambda name: memos.setdefault(name, resources.Memo()))
    items = load_question_sets(engine.experiment.data).sets["forget"][:2]
    qs, golds = [it.question for it in items], [it.answer for it in items]
    first = resources.answers(engine, Side("clean"), qs, 6)
    probs = resources.gold_probabilities(engine, Side("clean"), qs, golds)
    trs = resources.truth_ratio_values(engine, Side("clean"), items)
    assert side_cache.cached_count(cache_dir) == 6  # <MSA_CACHE_DIR>/side_answers.sqlite
    assert counted["generate"] == [2]

    memos.clear()  # a new server process: empty memos, a new engine, the same cache folder
    fresh = new_engine(engine, root)
    loads = len(counted["loads"])
    again = resources.answers(fresh, Side("clean"), qs, 6)
    assert again.texts == first.texts and again.compose_seconds == 0.0
    assert resources.gold_probabilities(fresh, Side("clean"), qs, golds) == probs
    assert resources.truth_ratio_values(fresh, Side("clean"), items) == trs
    assert counted["generate"] == [2] and len(counted["loads"]) == loads and fresh.loaded_side_models() == []
    # the unlearned column is still generated per point
    resources.answers(fresh, Point(1.0, 0.5), qs, 6)
    assert counted["generate"] == [2, 2]
