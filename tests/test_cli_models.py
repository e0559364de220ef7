"""msa_core.cli.models: ``msa vectors``, ``compose`` and ``generate`` on tiny checkpoints."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from msa_core import cli


def _exp_file(exp) -> str:
    return str(exp.checkpoints.clean.parent / "experiment.yaml")


def test_cli_vectors_json(tiny_experiment, cache_dir, capsys):
    assert cli.main(["vectors", _exp_file(tiny_experiment), "--json", "-"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["from_cache"] is False and list(first["layers"]) == ["embed", "L0", "L1", "head"]
    assert first["layers"]["L0"]["tensors"] == 9 and first["layers"]["L0"]["forget"] > 0
    assert cli.main(["vectors", _exp_file(tiny_experiment), "--json", "-"]) == 0
    assert json.loads(capsys.readouterr().out)["from_cache"] is True
    assert cli.main(["vectors", _exp_file(tiny_experiment)]) == 0  # human: one row per layer
    table = capsys.readouterr().out
    assert "loaded from cache" in table and "\nL1 " in table and "\nhead " in table


def test_cli_compose_and_generate(tiny_experiment, cache_dir, tmp_path, capsys):
    out = tmp_path / "composed"
    assert cli.main(["compose", _exp_file(tiny_experiment), "--alpha", "1", "--beta", "0.5", "--out", str(out), "--json", "-"]) == 0
    assert json.loads(capsys.readouterr().out)["out"] == str(out.resolve())
    assert cli.main(["compose", _exp_file(tiny_experiment), "--alpha", "1", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    rc = cli.main(["generate", _exp_file(tiny_experiment), "--alpha", "2", "--prompt", "Where was Ana Lenz born?", "--max-new-tokens", "4", "--json", "-"])
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
