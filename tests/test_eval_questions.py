"""The browsable question sets (msa_core.eval.questions) from TOFU- and MUSE-format folders."""

from __future__ import annotations

import json

from eval_fixtures import write_muse, write_tofu

from msa_core.eval.questions import QAItem, load_question_sets
from msa_core.experiment import DataConfig


def test_tofu_and_muse_sets_with_their_extras(tmp_path):
    tofu = write_tofu(tmp_path / "tofu")
    rows = json.loads((tofu / "forget10_perturbed.json").read_text())
    for i, r in enumerate(rows):
        r["paraphrased_question"] = f"Paraphrase {i}?"
    (tofu / "forget10_perturbed.json").write_text(json.dumps(rows))
    loaded = load_question_sets(DataConfig(tofu=tofu, muse=write_muse(tmp_path / "muse")))
    assert list(loaded.sets) == ["forget", "retain", "real authors", "world facts", "holdout",
                                 "MUSE knowmem forget", "MUSE knowmem retain"]
    assert loaded.problems == ()
    first = loaded.sets["forget"][0]
    assert first == QAItem(rows[0]["question"], rows[0]["answer"], rows[0]["paraphrased_answer"],
                           tuple(rows[0]["perturbed_answer"]), "Paraphrase 0?")
    assert len(loaded.sets["forget"]) == len(rows)
    assert loaded.sets["holdout"][0].perturbed_answers == () and loaded.sets["holdout"][0].paraphrased_question is None
    assert loaded.sets["MUSE knowmem forget"][0] == QAItem("Where was Ana Lenz born?", "Velmora")
    hash(first)  # items key the app's memos


def test_a_missing_or_broken_split_is_a_problem_not_a_failure(tmp_path):
    tofu = write_tofu(tmp_path / "tofu")
    (tofu / "holdout10.json").unlink()
    (tofu / "retain_perturbed.json").write_text(json.dumps([{"question": "q?"}]))
    loaded = load_question_sets(DataConfig(tofu=tofu))
    assert "forget" in loaded.sets and "retain" not in loaded.sets and "holdout" not in loaded.sets
    text = " ".join(loaded.problems)
    assert "retain:" in text and "answer" in text
    assert "holdout:" in text and "holdout10" in text


def test_no_data_folders_means_no_sets(tmp_path):
    loaded = load_question_sets(DataConfig())
    assert loaded.sets == {} and loaded.problems == ()
    broken = tmp_path / "muse"
    broken.mkdir()
    assert any(p.startswith("MUSE:") for p in load_question_sets(DataConfig(muse=broken)).problems)
