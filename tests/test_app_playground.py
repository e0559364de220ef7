"""AppTest tests of the Playground: the one-glance verdict, what-changed diffs, outcome colours,
pinned comparison points and honest timings (issue 15)."""

from __future__ import annotations

import difflib
import re

import pytest
from app_fixtures import (  # noqa: F401  (fixtures and helpers)
    MAX_NEW,
    _navigation_mode,
    independent_answers,
    load_experiment,
    new_app,
    no_exceptions,
    playground,
    set_alpha,
)
from test_eval_verdict import _holds  # the independent gold-holding count of the verdict tests

VERDICT_N = 3


def _ready(tiny_yaml):
    at = load_experiment(new_app(), tiny_yaml)
    playground(at)
    at.number_input(key="w_pg_max_new").set_value(MAX_NEW).run()
    at.number_input(key="w_pg_verdict_n").set_value(VERDICT_N).run()
    no_exceptions(at)
    return at


def test_the_verdict_counts_equal_an_independent_count(tiny_yaml):

    from msa_core.eval.questions import load_question_sets
    from msa_core.experiment import load_experiment as read_experiment

    at = _ready(tiny_yaml)
    set_alpha(at, 2.0)
    v = at.session_state["msa_verdict"]
    assert (v["alpha"], v["sets"]) == (2.0, {"forget": "forget", "retain": "retain"})
    sets = load_question_sets(read_experiment(tiny_yaml).data).sets
    counts = {}
    for name in ("forget", "retain"):
        items = sets[name][:VERDICT_N]
        answers = independent_answers(tiny_yaml, 2.0, 1.0, [it.question for it in items])
        counts[name] = sum(_holds(a, it.answer) for a, it in zip(answers, items))
    c = v["counts"]
    assert (c.leaked, c.forget_total, c.kept, c.retain_total) == (counts["forget"], VERDICT_N,
                                                                  counts["retain"], VERDICT_N)
    text = " ".join(m.value for m in at.markdown)
    assert f"forget facts still leaked **{counts['forget']}/{VERDICT_N}**" in text
    assert f"retain facts kept **{counts['retain']}/{VERDICT_N}**" in text
    assert "utility: not computed here yet" in text


def test_the_diff_marks_exactly_the_changed_words(tiny_yaml):
    at = _ready(tiny_yaml)
    set_alpha(at, 5.0)
    seen = at.session_state["msa_answers"]
    checked = 0
    for i, (corrupted, unlearned) in enumerate(zip(seen["corrupted"], seen["unlearned"])):
        old, new = corrupted.split(), unlearned.split()
        ops = difflib.SequenceMatcher(None, old, new, autojunk=False).get_opcodes()
        added = [w for op, _, _, j1, j2 in ops if op in ("insert", "replace") for w in new[j1:j2]]
        removed = [w for op, i1, i2, _, _ in ops if op in ("delete", "replace") for w in old[i1:i2]]
        # The unlearned card's text: added runs on a coloured background, removed ones struck through.
        card = at.main.get_by_key(f"ans_unlearned_{i}_text").markdown[0].value
        marked_added = [w for run in re.findall(r":\w+-background\[(.*?)\](?= |$)", card) for w in run.split()]
        marked_removed = [w for run in re.findall(r"~~(.*?)~~", card) for w in run.split()]
        unescape = lambda ws: [re.sub(r"\\(.)", r"\1", w) for w in ws]  # noqa: E731
        assert unescape(marked_added) == added and unescape(marked_removed) == removed
        checked += bool(added or removed)
    assert checked, "α = 5 changed no answer: the diff was not exercised"


def test_outcome_colours_mean_the_same_on_forget_and_retain_sets(tiny_yaml):
    at = _ready(tiny_yaml)
    at.sidebar.button(key="w_preset_corrupted").click().run()
    for source, words in (("forget", ("forget fact gone", "forget fact still leaked")),
                          ("retain", ("retain fact lost", "retain fact kept"))):
        at.selectbox(key="w_pg_source").set_value(source).run()
        no_exceptions(at)
        seen = at.session_state["msa_answers"]
        golds = [m.value.removeprefix("Gold: `").removesuffix("`") for m in at.markdown if m.value.startswith("Gold:")]
        marks = [m.value for m in at.markdown if "ROUGE-L recall" in m.value]
        # one mark per answer card, in card order (question by question, column by column)
        roles = [k for k in seen if k not in ("alpha", "beta", "questions")]
        expected = []
        for i, gold in enumerate(golds):
            for role in roles:
                holds = _holds(seen[role][i], gold)
                good = (not holds) if source == "forget" else holds
                expected.append((":green[" if good else ":red[") + ("**● " if holds else "**○ ")
                                + (words[1] if holds else words[0]))
        assert [m.split("**", 2)[0] + "**" + m.split("**", 2)[1] for m in marks] == expected


def test_pinned_points_are_extra_columns_with_their_metrics(tiny_yaml, app_env):
    at = _ready(tiny_yaml)
    set_alpha(at, 2.0)
    at.button(key="w_pin_add").click().run()
    set_alpha(at, 3.0)
    no_exceptions(at)
    seen = at.session_state["msa_answers"]
    assert "pin0" in seen and seen["pin0"] != seen["unlearned"]

    assert seen["pin0"] == independent_answers(tiny_yaml, 2.0, 1.0, seen["questions"])
    assert any("Pinned α=2, β=1" in c.value for c in at.caption)
    # Compute metrics fills corrupted, the current and the pinned point; the wait is shown with its parts.
    at.number_input(key="w_pg_subset").set_value(4).run()
    at.button(key="w_pg_metrics").click().run()
    no_exceptions(at)
    table = at.main.get_by_key("pg_compare_table").dataframe[0].value
    assert list(table["model"][:3]) == ["Corrupted (α=β=0)", "Unlearned (α=3, β=1)", "Pinned α=2, β=1"]
    assert (table.iloc[:3, 1:] != "—").all().all()
    wait = " ".join(c.value for c in at.caption if "Compute metrics* took" in c.value)
    assert "reference (first use: load + evaluation)" in wait and "corrupted" in wait and "α=2, β=1" in wait
    waited = at.session_state["msa_metrics_wait"]
    assert waited["total"] >= sum(s for _, s in waited["parts"])
    # The verdict now reads the stored utility: its share of the corrupted model's, or why there is none.
    from msa_core.eval import ResultStore
    from msa_core.eval.settings import settings_lookup_key

    last = at.session_state["msa_last_metrics"]
    store = ResultStore(app_env / "results.sqlite")
    key = settings_lookup_key(last["settings"])
    base = store.latest(last["fingerprint"], 0.0, 0.0, tier="fast", lookup_key=key).get("model_utility_tf")
    now = last["metrics"]["model_utility_tf"]
    text = " ".join(m.value for m in at.main.get_by_key("verdict_text").markdown)
    if base > 0:
        assert f"utility **{100 * now / base:.0f}%** of corrupted" in text
    else:
        assert "corrupted model's stored utility is 0" in text
    at.button(key="w_pin_remove_0").click().run()
    assert "pin0" not in at.session_state["msa_answers"]
    # Another method's named point in the results store joins the table with its own metrics.
    from dataclasses import replace

    from msa_core.eval.results import EvalResult, MetricValue
    from msa_core.eval.store import method_model

    named = EvalResult(0.0, 0.0, "full", "tofu", last["fingerprint"], {"key": "npo-h4"}, 0.0,
                       {"forget_quality": MetricValue("forget_quality", 0.125),
                        "model_utility": MetricValue("model_utility", 0.5)})
    store.put(replace(named, model=method_model("NPO", "epoch 2")))
    at.run()
    table = at.main.get_by_key("pg_compare_table").dataframe[0].value
    row = table[table["model"] == "NPO: epoch 2 (full tier)"]
    assert len(row) == 1 and row.iloc[0]["Forget quality ↑"] == "0.125" and row.iloc[0]["Model utility ↑"] == "0.5"


@pytest.mark.parametrize("source", ["forget"])
def test_question_chips_are_short_and_the_full_question_is_in_the_card(tiny_yaml, source):
    at = _ready(tiny_yaml)
    select = at.multiselect(key=f"w_pg_q_{source}")
    assert all(len(o) <= 64 for o in select.options)
    assert at.session_state["msa_answers"]["questions"][0] in " ".join(m.value.replace("\\", "") for m in at.markdown)
