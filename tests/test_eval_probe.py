"""Per-item probes (msa_core.eval.probe) on a real tiny engine, and entity grouping on real TOFU."""

from __future__ import annotations

import json

import pytest
from eval_fixtures import make_engine, tofu_rows, write_tofu

from msa_core.eval.probe import (
    GOLD_THRESHOLD,
    entity_groups,
    generate_for,
    gold_overlap,
    gold_probabilities,
    holds_gold,
    truth_ratio_values,
)
from msa_core.eval.questions import QAItem
from msa_core.targets import Point, Side


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    return make_engine(root, tofu=write_tofu(root / "tofu"), with_reference=False)


QUESTIONS = ["Where was Ana Lenz born?", "Who is Bo Kress?"]


def test_the_corrupted_side_and_the_point_at_zero_answer_alike(engine):
    at_zero = generate_for(engine, Point(0.0, 0.0), QUESTIONS, max_new_tokens=6)
    corrupted = generate_for(engine, Side("corrupted"), QUESTIONS, max_new_tokens=6)
    assert at_zero.texts == corrupted.texts and len(at_zero.texts) == 2
    assert corrupted.compose_seconds == 0.0 and at_zero.generate_seconds > 0
    # A raw continuation is a different prompt format, so its text differs from the QA answer.
    raw = generate_for(engine, Point(0.0, 0.0), QUESTIONS, max_new_tokens=6, raw=True)
    assert len(raw.texts) == 2


def test_gold_probabilities_are_probabilities_and_follow_the_point(engine):
    golds = ["In Velmora.", "A writer."]
    p0 = gold_probabilities(engine, Point(0.0, 0.0), QUESTIONS, golds)
    p5 = gold_probabilities(engine, Point(5.0, 0.0), QUESTIONS, golds)
    assert all(0.0 < p <= 1.0 for p in p0 + p5)
    assert p0 != p5
    assert gold_probabilities(engine, Side("corrupted"), QUESTIONS, golds) == pytest.approx(p0)
    with pytest.raises(ValueError, match="2 questions but 1 gold"):
        gold_probabilities(engine, Side("clean"), QUESTIONS, golds[:1])


def test_truth_ratios_need_perturbed_answers_and_are_positive(engine):
    rows = tofu_rows(3)
    items = [QAItem(r["question"], r["answer"], r["paraphrased_answer"], tuple(r["perturbed_answer"])) for r in rows]
    trs = truth_ratio_values(engine, Side("clean"), items)
    assert len(trs) == 3 and all(t > 0 for t in trs)
    assert truth_ratio_values(engine, Side("clean"), [rows[0]]) == pytest.approx(trs[:1])  # dicts work too
    with pytest.raises(KeyError, match="perturbed_answer"):
        truth_ratio_values(engine, Side("clean"), [QAItem("q?", "a.")])


def test_a_missing_reference_checkpoint_is_a_key_error_naming_it(engine):
    with pytest.raises(KeyError, match="no reference checkpoint"):
        generate_for(engine, Side("reference"), QUESTIONS, max_new_tokens=4)


def test_gold_overlap_is_rouge_l_recall_of_the_gold():
    assert gold_overlap("She was born in Velmora in 1950.", "Born in Velmora.") == pytest.approx(1.0)
    assert gold_overlap("", "Born in Velmora.") == 0.0 and gold_overlap("anything", " ") == 0.0
    assert holds_gold("He was born in Velmora.", "Born in Velmora.")
    assert not holds_gold("I do not know.", "Born in Velmora.")
    assert 0.0 < GOLD_THRESHOLD < 1.0


def test_entity_groups_follow_the_authors_in_order():
    names = ("Ana Lenz", "Bo Kress", "Cy Varo")
    items = [QAItem(q.format(n=n), "In Velmora.") for n in names
             for q in ("Where was {n} born?", "What does {n} write?", "Who are the parents of {n}?")]
    assert entity_groups(items) == [(n, [3 * k, 3 * k + 1, 3 * k + 2]) for k, n in enumerate(names)]
    assert entity_groups([{"question": "Who is Ana Lenz?", "answer": ""}]) == [("(unnamed)", [0])]


def test_entity_groups_on_real_tofu(shared_data):
    """TOFU lists 20 QA pairs per author; the Probe page's grouping must find exactly those."""
    rows = json.loads((shared_data / "tofu" / "forget10_perturbed.json").read_text())
    groups = entity_groups(rows)
    assert [idx for _, idx in groups] == [list(range(i, i + 20)) for i in range(0, 400, 20)]
    assert groups[0][0] == "Hsiao Yun-Hwa"
    assert all(all(name.split()[-1] in rows[i]["question"] + rows[i]["answer"] for i in idx[1:3])
               for name, idx in groups)
