"""msa_core.export: the round trip, the overwrite rule, a full disk, no temp folder left
behind on success or on any failure, the module filter recorded in msa.json and the model
card, an engine without a tokenizer."""

from __future__ import annotations

import errno
import json

import pytest
import torch
from safetensors.torch import load_file

from msa_core.atomic import temp_prefix
from msa_core.engine import Engine, ModuleFilter
from msa_core.export import export_model


def test_export_roundtrip_and_refuses_overwrite(tiny_experiment, cache_dir, tmp_path):
    engine = Engine.load(tiny_experiment, cache_dir=cache_dir)
    out = export_model(engine, 1.5, 0.5, tmp_path / "unlearned", metrics={"forget_quality": 0.3})
    sd = load_file(str(next(out.glob("*.safetensors"))))
    engine.set_coefficients(1.5, 0.5)
    for k, v in engine.model.state_dict().items():
        if k in sd:
            assert torch.equal(sd[k], v), k
    info = json.loads((out / "msa.json").read_text())
    assert info["alpha"] == 1.5 and info["beta"] == 0.5
    assert set(info["fingerprints"]) >= {"clean", "corrupted", "forget", "retain"}
    assert "α (forget) | 1.5" in (out / "README.md").read_text()
    assert (out / "tokenizer.json").is_file()
    with pytest.raises(FileExistsError, match="already exists"):
        export_model(engine, 2.0, 0.0, out)
    export_model(engine, 2.0, 0.0, out, force=True)
    assert json.loads((out / "msa.json").read_text())["alpha"] == 2.0


def test_full_disk_leaves_nothing_behind(tiny_experiment, cache_dir, tmp_path, monkeypatch):
    engine = Engine.load(tiny_experiment, cache_dir=cache_dir)
    out = export_model(engine, 1.0, 0.0, tmp_path / "model")
    before = sorted(p.name for p in out.iterdir())

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(type(engine.model), "save_pretrained", no_space)
    with pytest.raises(OSError, match=f"exporting to {out} failed: No space left"):
        export_model(engine, 3.0, 0.0, out, force=True)
    assert sorted(p.name for p in out.iterdir()) == before
    assert json.loads((out / "msa.json").read_text())["alpha"] == 1.0
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def _leftovers(folder, target) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(temp_prefix(target))]


def test_export_leaves_only_the_target_folder(tiny_experiment, cache_dir, tmp_path):
    engine = Engine.load(tiny_experiment, cache_dir=cache_dir)
    target = tmp_path / "exports" / "model"  # parent folder created on demand
    out = export_model(engine, 1.0, 0.5, target)
    assert out == target.resolve() and (out / "msa.json").is_file()
    assert _leftovers(target.parent, target) == []
    export_model(engine, 2.0, 0.5, target, force=True)
    assert _leftovers(target.parent, target) == [] and sorted(p.name for p in target.parent.iterdir()) == ["model"]


def test_non_os_failure_removes_the_temp_folder_and_keeps_the_old_export(
    tiny_experiment, cache_dir, tmp_path, monkeypatch
):
    engine = Engine.load(tiny_experiment, cache_dir=cache_dir)
    out = export_model(engine, 1.0, 0.0, tmp_path / "model")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(type(engine.tokenizer), "save_pretrained", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_model(engine, 3.0, 0.0, out, force=True)
    assert json.loads((out / "msa.json").read_text())["alpha"] == 1.0
    assert _leftovers(tmp_path, out) == []


def test_module_filter_is_recorded_and_applied(tiny_experiment, cache_dir, tmp_path):
    only = ModuleFilter(include=r"mlp", layers=(1, 1))
    engine = Engine.load(tiny_experiment, cache_dir=cache_dir, module_filter=only)
    out = export_model(engine, 2.0, 0.0, tmp_path / "filtered")
    info = json.loads((out / "msa.json").read_text())
    assert info["module_filter"] == {"include": "mlp", "layers": [1, 1]}
    assert "| module filter | include='mlp', layers=(1, 1) |" in (out / "README.md").read_text()
    sd = load_file(str(next(out.glob("*.safetensors"))))
    corrupted = load_file(str(next(tiny_experiment.checkpoints.corrupted.glob("*.safetensors"))))
    name0, name1 = "model.layers.0.mlp.up_proj.weight", "model.layers.1.mlp.up_proj.weight"
    assert torch.equal(sd[name0], corrupted[name0]) and not torch.equal(sd[name1], corrupted[name1])


def test_engine_without_tokenizer_exports_weights_only(tiny_experiment, cache_dir, tmp_path):
    loaded = Engine.load(tiny_experiment, cache_dir=cache_dir)
    engine = Engine(tiny_experiment, loaded.model, None, loaded.vectors)
    out = export_model(engine, 0.5, 0.5, tmp_path / "bare")
    assert any(out.glob("*.safetensors")) and not (out / "tokenizer.json").exists()
