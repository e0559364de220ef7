"""Export of the unlearned model (overwrite rules, full disk) and the CLI commands."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from msa_core import cli
from msa_core.engine import Engine
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
    assert info["alpha"] == 1.5 and info["beta"] == 0.5 and set(info["fingerprints"]) >= {"clean", "corrupted", "forget", "retain"}
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


def _exp_file(exp) -> str:
    return str(exp.checkpoints.clean.parent / "experiment.yaml")


def test_cli_vectors_json(tiny_experiment, cache_dir, capsys):
    assert cli.main(["vectors", _exp_file(tiny_experiment), "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["from_cache"] is False and "layers.0.mlp" in first["groups"]
    assert cli.main(["vectors", _exp_file(tiny_experiment), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["from_cache"] is True


def test_cli_compose_and_generate(tiny_experiment, cache_dir, tmp_path, capsys):
    out = tmp_path / "composed"
    assert cli.main(["compose", _exp_file(tiny_experiment), "--alpha", "1", "--beta", "0.5", "--out", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["out"] == str(out.resolve())
    assert cli.main(["compose", _exp_file(tiny_experiment), "--alpha", "1", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    rc = cli.main(["generate", _exp_file(tiny_experiment), "--alpha", "2", "--prompt", "Where was Ana Lenz born?", "--max-new-tokens", "4", "--json"])
    assert rc == 0
    rows = json.loads(capsys.readouterr().out)["answers"]
    assert set(rows[0]) == {"prompt", "corrupted", "unlearned(α=2, β=0)", "reference"}


def test_cli_errors_are_readable(tiny_experiment, cache_dir, capsys, tmp_path):
    assert cli.main(["vectors", str(tmp_path / "nope.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    rc = cli.main(["generate", _exp_file(tiny_experiment), "--alpha", "nan", "--prompt", "x"])
    assert rc == 2 and "alpha must be finite" in capsys.readouterr().err
    rc = cli.main(["generate", _exp_file(tiny_experiment), "--alpha", "1", "--prompt", "x", "--layers", "a-b"])
    assert rc == 2 and "--layers" in capsys.readouterr().err


def test_cli_layer_filter(tiny_experiment, cache_dir, tmp_path, capsys):
    out = tmp_path / "filtered"
    assert cli.main(["compose", _exp_file(tiny_experiment), "--alpha", "2", "--layers", "1-1", "--only", "mlp", "--out", str(out)]) == 0
    sd = load_file(str(next(out.glob("*.safetensors"))))
    corrupted = load_file(str(next(tiny_experiment.checkpoints.corrupted.glob("*.safetensors"))))
    assert torch.equal(sd["model.layers.0.mlp.up_proj.weight"], corrupted["model.layers.0.mlp.up_proj.weight"])
    assert not torch.equal(sd["model.layers.1.mlp.up_proj.weight"], corrupted["model.layers.1.mlp.up_proj.weight"])
