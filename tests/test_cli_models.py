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
    assert "--out is empty or '.'" in capsys.readouterr().err
    assert not (tmp_path / "msa.json").exists()


def _unloadable_experiment(root) -> str:
    """An experiment whose five checkpoint folders pass the file's checks (config.json and a
    *.safetensors each) but hold no model: any attempt to load one fails."""
    for role in ("clean", "corrupted", "forget", "retain", "reference"):
        folder = root / role
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("{}")
        (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    path = root / "experiment.yaml"
    path.write_text("name: unloadable\ncheckpoints:\n" + "".join(
        f"  {role}: {role}\n" for role in ("clean", "corrupted", "forget", "retain", "reference")))
    return str(path)


def test_alpha_beta_and_out_are_refused_before_any_model_is_loaded(tmp_path, cache_dir, capsys):
    exp = _unloadable_experiment(tmp_path / "exp")
    taken = tmp_path / "taken"
    (taken / "notes").mkdir(parents=True)
    cases = [
        (["compose", exp, "--alpha", "99", "--out", str(tmp_path / "new")], "alpha=99.0 is outside the allowed range"),
        (["compose", exp, "--alpha", "1", "--beta", "-3", "--out", str(tmp_path / "new")], "beta=-3.0 is outside"),
        (["compose", exp, "--alpha", "1", "--out", str(taken)], f"--out {taken} already exists; add --force"),
        (["compose", exp, "--alpha", "1", "--out", str(taken), "--force"], "is not an MSA export (no msa.json)"),
        (["compose", exp, "--alpha", "1", "--out", ""], "--out is empty or '.'"),
        (["generate", exp, "--alpha", "7", "--prompt", "x"], "alpha=7.0 is outside"),
        (["eval", exp, "--alpha", "nan"], "alpha must be finite"),
        (["eval", exp, "--alpha", "1", "--open-unlearning-dir", str(taken)], f"{taken} is not empty; add --overwrite"),
        (["sweep", exp, "--alphas", "0,9"], "--alphas: 9 is outside"),
        (["sweep", exp, "--alphas", "0,1", "--columns", "fq"], "--columns: unknown metric(s) fq"),
        (["results", exp, "--columns", "nope"], "--columns: unknown metric(s) nope"),
    ]
    for argv, needle in cases:
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        # The input's own error, not the checkpoint's (loading any model here would fail differently).
        assert needle in err and "safetensors" not in err and "config" not in err, (argv, err)
    assert not (cache_dir / "vectors").exists()  # no engine was built
    assert sorted(p.name for p in taken.iterdir()) == ["notes"]


def test_a_refused_alpha_does_not_even_import_torch(tmp_path):
    """The checks run before the heavy imports: `msa compose` with α out of range answers without torch."""
    import subprocess
    import sys

    exp = _unloadable_experiment(tmp_path / "exp")
    code = ("import sys\nfrom msa_core import cli\n"
            f"rc = cli.main(['compose', {exp!r}, '--alpha', '99'])\n"
            "print(rc, 'torch' in sys.modules, 'transformers' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["2", "False", "False"]
    assert "alpha=99.0 is outside" in done.stderr


def test_compose_without_out_writes_under_the_cache_folder(tiny_experiment, cache_dir, tmp_path, capsys,
                                                            monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may land in the working directory (the old `unlearned/`)
    exp = _exp_file(tiny_experiment)
    assert cli.main(["compose", exp, "--alpha", "1", "--beta", "0.5", "--json", "-"]) == 0
    out = cache_dir / "exports" / f"{tiny_experiment.name}-a1-b0.5"
    assert json.loads(capsys.readouterr().out)["out"] == str(out)
    assert (out / "msa.json").is_file() and (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["cache", "ckpt"])
    assert cli.main(["compose", exp, "--alpha", "1", "--beta", "0.5"]) == 2  # a second run needs --force
    assert f"--out {out} already exists; add --force" in capsys.readouterr().err
    assert cli.main(["compose", exp, "--alpha", "1", "--beta", "0.5", "--force", "--quiet"]) == 0


def test_engine_commands_apply_the_thread_policy_and_say_so(tiny_experiment, cache_dir, capsys, monkeypatch):
    from msa_core.threads import ENV_VAR

    monkeypatch.delenv(ENV_VAR, raising=False)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        exp = _exp_file(tiny_experiment)
        argv = ["generate", exp, "--alpha", "1", "--prompt", "Where was Ana Lenz born?", "--max-new-tokens", "2"]
        assert cli.main(argv) == 0
        assert torch.get_num_threads() == 1  # a tiny model: the size rule's one thread
        assert "torch threads: 1 thread (policy: " in capsys.readouterr().err
        assert cli.main(["--threads", "2", *argv]) == 0
        assert torch.get_num_threads() == 2
        assert "torch threads: 2 threads (--threads)" in capsys.readouterr().err
        monkeypatch.setenv(ENV_VAR, "3")
        assert cli.main(argv) == 0 and torch.get_num_threads() == 3
        assert "torch threads: 3 threads (MSA_THREADS)" in capsys.readouterr().err
        monkeypatch.setenv(ENV_VAR, "many")
        assert cli.main(argv) == 2
        assert "MSA_THREADS must be a whole number of threads, got 'many'" in capsys.readouterr().err
        assert cli.main(["--threads", "0", *argv]) == 2
        assert "--threads must be between 1 and" in capsys.readouterr().err
    finally:
        torch.set_num_threads(before)


def _with_swapped_candidate(exp, tmp_path):
    """The tiny experiment plus a θ_clean candidate 'swap' whose forget / retain fine-tunes are the
    experiment's retain / forget ones (so its vectors are the default's, exchanged)."""
    from dataclasses import replace

    from msa_core.experiment import CleanCandidate, save_experiment

    ck = exp.checkpoints
    path = tmp_path / "swap.yaml"
    save_experiment(replace(exp, clean_history=(CleanCandidate("swap", ck.clean, ck.retain, ck.forget),)), path)
    return path


def test_cli_clean_choice_composes_that_choice_and_names_unknown_ones(tiny_experiment, cache_dir, tmp_path, capsys):
    """--clean LABEL composes θ_c − α(θ_f − θ_clean) + β(θ_r − θ_clean) with that candidate's folders
    (float64 oracle from the files); an unknown label or epoch is one error listing what exists."""
    ck = tiny_experiment.checkpoints
    path = _with_swapped_candidate(tiny_experiment, tmp_path)
    out = tmp_path / "swapped"
    assert cli.main(["compose", str(path), "--alpha", "1.5", "--beta", "0.5", "--clean", "swap", "--out", str(out),
                     "--quiet"]) == 0
    got = load_file(str(next(out.glob("*.safetensors"))))
    roles = ("clean", "corrupted", "forget", "retain")
    t = {r: load_file(str(next(getattr(ck, r).glob("*.safetensors")))) for r in roles}
    for name, w in got.items():
        c, f, r, k = (t[x][name].double() for x in ("clean", "forget", "retain", "corrupted"))
        want = k - 1.5 * (r - c) + 0.5 * (f - c)  # forget and retain exchanged
        default = k - 1.5 * (f - c) + 0.5 * (r - c)
        # fp32 arithmetic against a float64 oracle: equal to rounding, far from the default choice
        assert float((w.double() - want).abs().max()) < 1e-6, name
        assert float((default - want).abs().max()) > 1e-3, name
    rc = cli.main(["compose", str(path), "--alpha", "1", "--clean", "nope", "--out", str(tmp_path / "x")])
    assert rc == 2 and "no θ_clean candidate 'nope'; available: default, swap" in capsys.readouterr().err
    rc = cli.main(["compose", str(path), "--alpha", "1", "--forget-epoch", "3", "--out", str(tmp_path / "y")])
    assert rc == 2 and "no complete epoch-3 folder; available epochs: final" in capsys.readouterr().err


def test_cli_generate_reads_side_answers_from_the_disk_cache(tiny_experiment, cache_dir, capsys, monkeypatch):
    """msa generate's corrupted and reference columns are generated once; a second run reads them
    from the side cache (counted generations), the unlearned column is generated each time."""
    import msa_core.eval.probe as probe

    calls: list[str] = []
    real = probe.generate_for

    def counted(engine, target, prompts, **kw):
        calls.append(target.label)
        return real(engine, target, prompts, **kw)

    monkeypatch.setattr(probe, "generate_for", counted)
    argv = ["generate", _exp_file(tiny_experiment), "--alpha", "1", "--prompt", "Where was Ana Lenz born?",
            "--max-new-tokens", "4", "--json", "-"]
    assert cli.main(argv) == 0
    first = json.loads(capsys.readouterr().out)["answers"]
    assert sorted(calls) == ["corrupted", "reference"]
    calls.clear()
    assert cli.main(argv) == 0
    assert calls == [] and json.loads(capsys.readouterr().out)["answers"] == first
