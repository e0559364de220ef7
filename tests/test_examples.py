"""The example experiment files in docs/examples/ load with msa_core.experiment on the shared data layout.

The files name their folders with ``/path/to/data`` and ``/path/to/checkpoints`` placeholders;
the tests put the shared data folder (skipped when this machine has none) and stand-in
checkpoint folders in their place, then load the result as the app and the CLI do.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from msa_core.eval.data import load_muse
from msa_core.eval.openunlearning import read_reference_tr
from msa_core.eval.tofu import load_tofu_sets
from msa_core.experiment import load_experiment

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "docs" / "examples"
SHARED_DATA = ROOT.parent / "shared" / "data"
ROLES = ("clean", "corrupted", "forget", "retain", "reference")

needs_data = pytest.mark.skipif(not (SHARED_DATA / "tofu").is_dir() or not (SHARED_DATA / "muse").is_dir(),
                                reason=f"no shared TOFU/MUSE data folder at {SHARED_DATA}")


def _filled(name: str, tmp_path: Path, *, uncomment: str = "") -> Path:
    """The example with its placeholders replaced (and the commented-out ``uncomment:`` line enabled)."""
    checkpoints = tmp_path / "checkpoints"
    for role in ROLES:  # stand-ins: what the experiment loader checks of a model folder
        (checkpoints / role).mkdir(parents=True, exist_ok=True)
        (checkpoints / role / "config.json").write_text("{}", encoding="utf-8")
        (checkpoints / role / "model.safetensors").write_bytes(b"")
    text = (EXAMPLES / name).read_text(encoding="utf-8")
    assert "/path/to/data" in text and "/path/to/checkpoints" in text
    if uncomment:
        text, n = re.subn(rf"^# ({uncomment}:)", r"\1", text, flags=re.M)
        assert n == 1, f"no commented-out {uncomment}: line in {name}"
    text = text.replace("/path/to/data", str(SHARED_DATA)).replace("/path/to/checkpoints", str(checkpoints))
    out = tmp_path / name
    out.write_text(text, encoding="utf-8")
    return out


def test_every_example_names_only_placeholder_folders():
    for path in sorted(EXAMPLES.glob("*.yaml")):
        text = path.read_text(encoding="utf-8")
        folders = re.findall(r"(?<![\w.])/[\w./-]+", text)
        assert folders and all(f.startswith("/path/to/") for f in folders), (path.name, folders)


@needs_data
def test_tofu_example_loads_on_the_shared_tofu_layout(tmp_path):
    exp = load_experiment(_filled("tofu_experiment.yaml", tmp_path))
    assert exp.name == "tofu-forget10" and exp.benchmarks == ("tofu",)
    assert exp.checkpoints.reference == (tmp_path / "checkpoints" / "reference").resolve()
    assert (exp.data.forget_split, exp.data.retain_split, exp.data.holdout_split) == (
        "forget10", "retain_perturbed", "holdout10")
    assert exp.prompt_format == "auto" and exp.reference_eval is None
    assert exp.metric_conventions == {"extraction_strength": "open-unlearning", "min_k": "open-unlearning",
                                      "knowmem_prompt": "open-unlearning"}
    sets = load_tofu_sets(exp.data)
    # TOFU forget10: 20 authors x 20 questions; retain_perturbed: 400; real authors 100, world facts 117
    assert (len(sets.forget.items), len(sets.retain.items), len(sets.ra.items), len(sets.wf.items)) == (
        400, 400, 100, 117)
    assert not sets.missing


@needs_data
def test_tofu_example_reference_eval_line_names_the_official_log(tmp_path):
    exp = load_experiment(_filled("tofu_experiment.yaml", tmp_path, uncomment="reference_eval"))
    assert exp.reference_eval is not None and exp.reference_eval.is_file()
    tr = read_reference_tr(exp.reference_eval)
    assert len(tr) == 300 and all(v > 0 for v in tr.values())  # the log covers the first 300 forget10 items


@needs_data
def test_muse_example_loads_on_the_shared_muse_news_layout(tmp_path):
    exp = load_experiment(_filled("muse_news_experiment.yaml", tmp_path))
    assert exp.benchmarks == ("muse",) and exp.data.tofu is None
    assert exp.metric_conventions["knowmem_prompt"] == "open-unlearning"
    muse = load_muse(exp.data.muse)
    assert len(muse.knowmem_forget) == 100 and len(muse.knowmem_retain) == 100
    assert len(muse.verbmem_forget) == 100 and len(muse.privleak_holdout) == 100
