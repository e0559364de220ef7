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
    exp = _exp_file(tiny_experiment)
    assert cli.main(["compose", exp, "--alpha", "1", "--beta", "0.5", "--out", str(out), "--json", "-"]) == 0
    assert json.loads(capsys.readouterr().out)["out"] == str(out.resolve())
    assert cli.main(["compose", _exp_file(tiny_experiment), "--alpha", "1", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    rc = cli.main(["generate", exp, "--alpha", "2", "--prompt", "Where was Ana Lenz born?", "--max-new-tokens", "4",
                   "--json", "-"])
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
    exp = _exp_file(tiny_experiment)
    args = ["compose", exp, "--alpha", "2", "--layers", "1-1", "--only", "mlp", "--out", str(out)]
    assert cli.main(args) == 0
    sd = load_file(str(next(out.glob("*.safetensors"))))
    corrupted = load_file(str(next(tiny_experiment.checkpoints.corrupted.glob("*.safetensors"))))
    assert torch.equal(sd["model.layers.0.mlp.up_proj.weight"], corrupted["model.layers.0.mlp.up_proj.weight"])
    assert not torch.equal(sd["model.layers.1.mlp.up_proj.weight"], corrupted["model.layers.1.mlp.up_proj.weight"])


def test_cli_refuses_bad_devices_dtypes_and_empty_filters(tiny_experiment, cache_dir, capsys):
    exp = _exp_file(tiny_experiment)
    base = ["generate", exp, "--alpha", "1", "--prompt", "x", "--max-new-tokens", "1"]
    assert cli.main([*base, "--device", "foo"]) == 2
    assert "msa generate: error: unknown device 'foo'; available devices: cpu" in capsys.readouterr().err
    assert cli.main([*base, "--device", "cuda:99"]) == 2
    assert "device 'cuda:99' is not available on this machine; available devices: cpu" in capsys.readouterr().err
    assert cli.main([*base, "--dtype", "int8"]) == 2
    assert "unknown model dtype 'int8'; expected one of float32, bfloat16, float16" in capsys.readouterr().err
    assert cli.main([*base, "--only", "no_such_module"]) == 2
    err = capsys.readouterr().err
    assert "module filter (include='no_such_module') matches none of the model's" in err and "Traceback" not in err
    assert cli.main([*base, "--layers", "30-40"]) == 2
    assert "module filter (layers 30-40) matches none" in capsys.readouterr().err


def test_cli_demo_never_replaces_a_folder_it_did_not_make(tmp_path, capsys):
    thesis = tmp_path / "thesis"
    (thesis / "data").mkdir(parents=True)
    (thesis / "data" / "survey.csv").write_text("id,answer\n1,yes\n")
    for extra in ([], ["--force"]):
        assert cli.main(["demo", "--quick", "--out", str(thesis), *extra]) == 2
        err = capsys.readouterr().err
        assert f"{thesis} exists and was not created by `msa demo`" in err and "refusing to replace it" in err
        assert (thesis / "data" / "survey.csv").read_text() == "id,answer\n1,yes\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thesis"]
    assert cli.main(["demo", "--quick", "--out", ""]) == 2
    assert "the demo folder is empty" in capsys.readouterr().err


def test_cli_compose_never_writes_over_an_input(tiny_experiment, cache_dir, tmp_path, capsys, monkeypatch):
    corrupted = tiny_experiment.checkpoints.corrupted
    before = {p.name: p.read_bytes() for p in corrupted.iterdir()}
    rc = cli.main(["compose", _exp_file(tiny_experiment), "--alpha", "1", "--force", "--out", str(corrupted)])
    assert rc == 2
    assert f"refusing to export to {corrupted}: {corrupted} is the corrupted checkpoint" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in corrupted.iterdir()} == before
    monkeypatch.chdir(tmp_path)
    assert cli.main(["compose", _exp_file(tiny_experiment), "--alpha", "1", "--force", "--out", ""]) == 2
    assert "the output folder is empty or '.'" in capsys.readouterr().err
    assert not (tmp_path / "msa.json").exists()
