"""Experiment files (msa_core.experiment): validation naming the field, round trip, atomic save."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from msa_core.atomic import TEMP_SUFFIX
from msa_core.experiment import (
    DataConfig,
    load_experiment,
    replace_ranges,
    save_experiment,
    validate_coefficients,
)


def test_experiment_file_errors_name_field(tmp_path, tiny_experiment):
    src = tiny_experiment.checkpoints.clean.parent / "experiment.yaml"
    text = src.read_text()
    bad = src.parent / "bad.yaml"
    bad.write_text(text.replace("retain: retain", "retain: nowhere"))
    with pytest.raises(FileNotFoundError, match="checkpoints.retain"):
        load_experiment(bad)
    bad.write_text("checkpoints: {clean: a}\n")
    with pytest.raises(KeyError, match="checkpoints.corrupted"):
        load_experiment(bad)
    bad.write_text(text + "alpha_range: [3, 1]\n")
    with pytest.raises(ValueError, match="alpha_range"):
        load_experiment(bad)
    bad.write_text("checkpoints: [oops\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_experiment(bad)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_experiment(tmp_path / "missing.yaml")


def test_experiment_roundtrip(tiny_experiment):
    src = tiny_experiment.checkpoints.clean.parent / "experiment.yaml"
    exp = load_experiment(src)
    assert exp.checkpoints == tiny_experiment.checkpoints
    assert "clean: clean" in src.read_text()  # relative paths, so the folder can move


def test_save_writes_atomically_and_replaces_the_old_file(tiny_experiment, tmp_path):
    target = tmp_path / "out" / "experiment.yaml"
    save_experiment(tiny_experiment, target)
    first = load_experiment(target)
    assert first.checkpoints == tiny_experiment.checkpoints
    save_experiment(replace(tiny_experiment, name="renamed"), target)
    assert load_experiment(target).name == "renamed"
    assert [p.name for p in target.parent.iterdir()] == ["experiment.yaml"]  # no temp file left
    assert not list(target.parent.glob(f"*{TEMP_SUFFIX}"))


def test_benchmarks_follow_the_data_folders(tiny_experiment, tmp_path):
    assert tiny_experiment.benchmarks == ()
    tofu, muse = tmp_path / "tofu", tmp_path / "muse"
    assert replace(tiny_experiment, data=DataConfig(tofu=tofu)).benchmarks == ("tofu",)
    assert replace(tiny_experiment, data=DataConfig(muse=muse)).benchmarks == ("muse",)
    assert replace(tiny_experiment, data=DataConfig(tofu=tofu, muse=muse)).benchmarks == ("tofu", "muse")


def test_coefficients_outside_the_range_are_named(tiny_experiment):
    validate_coefficients(0.0, 5.0)
    with pytest.raises(ValueError, match="alpha=6.0 is outside"):
        tiny_experiment.validate_coefficients(6.0, 0.0)
    with pytest.raises(ValueError, match="beta must be finite"):
        validate_coefficients(1.0, float("nan"))
    with pytest.raises(ValueError, match="alpha must be a number"):
        validate_coefficients("x", 0.0)
    wider = replace_ranges(tiny_experiment, alpha_range=(-1.0, 10.0))
    wider.validate_coefficients(-1.0, 0.0)
    assert wider.beta_range == tiny_experiment.beta_range
    with pytest.raises(ValueError, match="alpha_range"):
        replace_ranges(tiny_experiment, alpha_range=(2.0, 1.0))


@pytest.mark.parametrize("split", ["../../x", "../forget10", "/etc/passwd", "sub/forget10", "..", ".hidden", "a\\b", 7])
def test_split_names_that_could_leave_the_data_folder_are_refused(tiny_experiment, split):
    src = tiny_experiment.checkpoints.clean.parent / "experiment.yaml"
    bad = src.parent / "bad.yaml"
    bad.write_text(src.read_text() + f"data:\n  forget_split: {json.dumps(split)}\n")
    with pytest.raises(ValueError, match=r"bad.yaml: data.forget_split: .* is not a split name"):
        load_experiment(bad)


def test_plain_split_names_are_accepted(tiny_experiment):
    src = tiny_experiment.checkpoints.clean.parent / "experiment.yaml"
    ok = src.parent / "ok.yaml"
    ok.write_text(src.read_text() + "data:\n  forget_split: forget05\n  retain_split: retain-v1.2_perturbed\n")
    exp = load_experiment(ok)
    assert (exp.data.forget_split, exp.data.retain_split) == ("forget05", "retain-v1.2_perturbed")


def test_invalid_utf8_experiment_file_names_file_byte_and_offset(tiny_experiment):
    src = tiny_experiment.checkpoints.clean.parent / "experiment.yaml"
    bad = src.parent / "bad.yaml"
    bad.write_bytes(b"name: \xe9t\xe9\n")
    with pytest.raises(ValueError, match=r"bad.yaml: not valid UTF-8 \(byte 0xe9 at offset 6\)"):
        load_experiment(bad)


def test_prompt_format_and_conventions_are_read_validated_and_written(tiny_experiment, tmp_path):
    src = tiny_experiment.checkpoints.clean.parent / "experiment.yaml"
    exp = load_experiment(src)
    assert exp.prompt_format == "auto" and exp.metric_conventions == {
        "extraction_strength": "open-unlearning", "min_k": "open-unlearning", "knowmem_prompt": "open-unlearning"}
    custom = src.parent / "custom.yaml"
    custom.write_text(src.read_text() + "prompt_format: open-unlearning-tofu\n"
                      "conventions: {extraction_strength: paper, min_k: muse-paper}\n")
    exp = load_experiment(custom)
    assert exp.prompt_format == "open-unlearning-tofu"
    assert exp.metric_conventions == {"extraction_strength": "paper", "min_k": "muse-paper",
                                      "knowmem_prompt": "open-unlearning"}
    hash(exp)  # experiments stay hashable (caches key on them)
    target = tmp_path / "saved.yaml"
    save_experiment(exp, target)
    back = load_experiment(target)
    assert back.prompt_format == exp.prompt_format and back.metric_conventions == exp.metric_conventions
    bad = src.parent / "bad.yaml"
    bad.write_text(src.read_text() + "prompt_format: llama\n")
    with pytest.raises(ValueError, match="prompt_format"):
        load_experiment(bad)
    bad.write_text(src.read_text() + "conventions: {min_k: everything}\n")
    with pytest.raises(ValueError, match="conventions.min_k"):
        load_experiment(bad)
    bad.write_text(src.read_text() + "conventions: {rouge: x}\n")
    with pytest.raises(ValueError, match="unknown convention 'rouge'"):
        load_experiment(bad)


_HISTORY = """clean_history:
  - label: pretrain-e10
    clean: clean
    forget: forget
    retain: retain
    before_forget: true
    step: 10
  - label: task-vector
    clean: corrupted
    forget: forget
    retain: retain
    before_forget: false
"""


def test_clean_history_is_read_written_and_not_fingerprinted(tiny_experiment, tmp_path):
    from msa_core.experiment import CleanCandidate
    from msa_core.fingerprints import experiment_fingerprint

    src = tiny_experiment.checkpoints.clean.parent / "experiment.yaml"
    assert "clean_history" not in src.read_text()  # not written when there is none
    hist = src.parent / "hist.yaml"
    hist.write_text(src.read_text() + _HISTORY)
    exp = load_experiment(hist)
    ck = tiny_experiment.checkpoints
    assert exp.clean_history == (
        CleanCandidate("pretrain-e10", ck.clean, ck.forget, ck.retain, before_forget=True, step=10.0),
        CleanCandidate("task-vector", ck.corrupted, ck.forget, ck.retain, before_forget=False, step=None),
    )
    hash(exp)
    assert experiment_fingerprint(exp) == experiment_fingerprint(tiny_experiment)
    target = src.parent / "saved.yaml"  # beside the checkpoints: paths are written relative
    save_experiment(exp, target)
    text = target.read_text()
    assert "label: pretrain-e10" in text and "clean: corrupted" in text and "step: 10\n" in text
    assert load_experiment(target).clean_history == exp.clean_history
    moved = tmp_path / "elsewhere" / "saved.yaml"  # outside: absolute paths, same candidates
    save_experiment(exp, moved)
    assert load_experiment(moved).clean_history == exp.clean_history


@pytest.mark.parametrize("entry,error,field", [
    ("- {clean: clean, forget: forget, retain: retain}", KeyError, r"clean_history\[0\]\.label is missing"),
    ("- {label: a, forget: forget, retain: retain}", KeyError, r"clean_history\[0\]\.clean is missing"),
    ("- {label: default, clean: clean, forget: forget, retain: retain}", ValueError,
     r"clean_history\[0\]\.label: 'default' is reserved"),
    ("- {label: 'a b', clean: clean, forget: forget, retain: retain}", ValueError,
     r"clean_history\[0\]\.label: 'a b' is not a label"),
    ("- {label: a, clean: clean, forget: forget, retain: retain}\n"
     "  - {label: a, clean: clean, forget: forget, retain: retain}", ValueError,
     r"clean_history\[1\]\.label: 'a' is already used by .*clean_history\[0\]"),
    ("- {label: a, clean: nowhere, forget: forget, retain: retain}", FileNotFoundError,
     r"clean_history\[0\]\.clean: model folder .*nowhere does not exist"),
    ("- {label: a, clean: clean, forget: tok, retain: retain}", FileNotFoundError,
     r"clean_history\[0\]\.forget: .*tok has no config.json"),
    ("- {label: a, clean: clean, forget: forget, retain: retain, before_forget: maybe}", ValueError,
     r"clean_history\[0\]\.before_forget: expected true or false"),
    ("- {label: a, clean: clean, forget: forget, retain: retain, step: .inf}", ValueError,
     r"clean_history\[0\]\.step: expected a finite number"),
    ("- {label: a, clean: clean, forget: forget, retain: retain, step: ten}", ValueError,
     r"clean_history\[0\]\.step: expected a finite number"),
    ("- {label: a, clean: clean, forget: forget, retain: retain, epochs: 3}", ValueError,
     r"clean_history\[0\]: unknown field\(s\) \['epochs'\]"),
    ("- just-a-string", ValueError, r"clean_history\[0\]: expected a mapping"),
    ("{label: a}", ValueError, r"clean_history: expected a list"),
])
def test_bad_clean_history_entries_name_the_field(tiny_experiment, entry, error, field):
    src = tiny_experiment.checkpoints.clean.parent / "experiment.yaml"
    bad = src.parent / "bad.yaml"
    body = f"  {entry}" if entry.startswith("-") else f" {entry}"
    bad.write_text(src.read_text() + "clean_history:\n" + body + "\n")
    with pytest.raises(error, match=r"bad.yaml: " + field):
        load_experiment(bad)


def test_clean_history_paths_are_checked_only_when_asked(tiny_experiment):
    src = tiny_experiment.checkpoints.clean.parent / "experiment.yaml"
    later = src.parent / "later.yaml"
    later.write_text(src.read_text() + "clean_history:\n  - {label: a, clean: x, forget: y, retain: z}\n")
    exp = load_experiment(later, check_paths=False)
    assert exp.clean_history[0].clean == src.parent / "x"
