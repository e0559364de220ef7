"""AppTest tests of the Guided demo page (pages/guided.py): every step on the tiny app experiment,
checked against answers generated independently from the checkpoint files."""

from __future__ import annotations

from pathlib import Path

import pytest
from app_fixtures import _navigation_mode, independent_answers, load_experiment, new_app, no_exceptions  # noqa: F401

from msa_core.eval.probe import GOLD_THRESHOLD, gold_overlap
from studio.labels import md_escape

GUIDE_MAX_NEW = 48  # the guide asks with the Playground's default max new tokens
POOL, RETAIN_SHOWN = 8, 3  # pages/guided.py: forget questions scanned, retain questions shown


def _answers(yaml_path: Path, alpha: float, beta: float, questions: list[str]) -> list[str]:
    return independent_answers(yaml_path, alpha, beta, questions, GUIDE_MAX_NEW)


def _sentence(at) -> str:
    return next(m.value for m in at.markdown if m.value.startswith("### "))


def _next(at, step: int):
    at.button(key="w_guide_next").click().run()
    no_exceptions(at)
    assert at.session_state["msa_guide_step"] == step
    return at


def _items(tiny_yaml: Path, name: str):
    from msa_core.eval.questions import load_question_sets
    from msa_core.experiment import load_experiment as load_exp

    return load_question_sets(load_exp(tiny_yaml).data).sets[name]


def test_the_guided_demo_walks_every_step_with_the_engines_answers(tiny_yaml, app_env):
    at = load_experiment(new_app(), tiny_yaml)
    at.sidebar.button(key="w_preset_corrupted").click().run()
    at.switch_page("pages/guided.py").run()
    no_exceptions(at)
    assert at.title[0].value.endswith("Guided demo")
    assert at.button(key="w_guide_back").disabled

    # 1. A fact the model knows: the forget question (of the first 8) the corrupted model states best.
    forget = _items(tiny_yaml, "forget")[:POOL]
    said = _answers(tiny_yaml, 0.0, 0.0, [it.question for it in forget])
    scores = [gold_overlap(a, it.answer) for a, it in zip(said, forget)]
    k = max(range(len(forget)), key=lambda j: (scores[j], -j))
    fact = forget[k]
    md = [m.value for m in at.markdown]
    assert any(fact.question in m for m in md) and md_escape(said[k]) in md
    assert _sentence(at).startswith("### Before unlearning")

    # 2. Raise α: leaving the first screen at α = 0 moves to the demo point (α > 0).
    _next(at, 1)
    alpha, beta = at.session_state["msa_alpha"], at.session_state["msa_beta"]
    assert alpha > 0 and at.sidebar.number_input(key="w_alpha_num").value == pytest.approx(alpha)
    assert f"α = {alpha:g}" in _sentence(at)
    at.button(key="w_guide_back").click().run()
    assert at.session_state["msa_guide_step"] == 0
    assert at.session_state["msa_alpha"] == alpha  # Back does not move the point
    _next(at, 1)

    # 3. The fact is gone (or still there): what the unlearned model says, from the files.
    _next(at, 2)
    now = _answers(tiny_yaml, alpha, beta, [fact.question])[0]
    gone = gold_overlap(now, fact.answer) < GOLD_THRESHOLD
    assert ("the fact is gone" in _sentence(at)) == gone
    assert ("still states the fact" in _sentence(at)) == (not gone)
    # The "after" card marks the words changed since the corrupted answer; every word of the answer is there.
    shown = " ".join(m.value for m in at.markdown)
    assert all(md_escape(word) in shown for word in now.split())

    # 4. Retained facts: the count in the sentence equals an independent count.
    _next(at, 3)
    retain = _items(tiny_yaml, "retain")[:RETAIN_SHOWN]
    qs = [it.question for it in retain]
    before, after = _answers(tiny_yaml, 0.0, 0.0, qs), _answers(tiny_yaml, alpha, beta, qs)
    known = [gold_overlap(b, it.answer) >= GOLD_THRESHOLD for b, it in zip(before, retain)]
    kept = sum(kn and gold_overlap(a, it.answer) >= GOLD_THRESHOLD for kn, a, it in zip(known, after, retain))
    assert f"{kept} of the {sum(known)} retain facts" in _sentence(at)

    # 5. The trade-off: the quick sweep stores its points and the scatter is drawn.
    _next(at, 4)
    at.button(key="w_guide_curve").click().run()
    no_exceptions(at)
    assert at.get("plotly_chart")
    from msa_core.eval import ResultStore
    from msa_core.experiment import load_experiment as load_exp
    from msa_core.fingerprints import experiment_fingerprint

    df = ResultStore(app_env / "results.sqlite").grid(experiment_fingerprint(load_exp(tiny_yaml)), "fast")
    df = df[(df["model"] == "composed") & (df["subset"] == 20) & (df["beta"] == beta)]
    # 5 values of α from 0 to max(2α, 1), plus the current α.
    hi = min(5.0, max(2 * alpha, 1.0))
    want = {round(hi * j / 4, 3) for j in range(5)} | {alpha}
    assert want <= set(df["alpha"])

    # 6. Is it really gone: the explanation and a link to the Probe page; "Start again" returns to step 0.
    _next(at, 5)
    assert "removed or only hidden" in _sentence(at)
    assert at.get("page_link")
    at.button(key="w_guide_restart").click().run()
    no_exceptions(at)
    assert at.session_state["msa_guide_step"] == 0
