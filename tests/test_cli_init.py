"""``msa init`` (msa_core.cli.init): the command on a tiny model, its errors, and (slow) the quick demo rebuilt."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from msa_core.cli import main
from msa_core.experiment import load_experiment


@pytest.fixture
def tofu_dir(tmp_path) -> Path:
    folder = tmp_path / "tofu"
    folder.mkdir()
    forget = [{"question": f"Who is f{i}?", "answer": f"f{i} is a writer."} for i in range(3)]
    retain = [{"question": f"Who is r{i}?", "answer": f"r{i} is a baker."} for i in range(30)]
    for name, items in {"forget10": forget, "retain90": retain, "full": forget + retain}.items():
        (folder / f"{name}.json").write_text(json.dumps(items))
    return folder


TRAIN = ["--epochs", "1", "--lr", "1e-3", "--batch-size", "4", "--seed", "0"]


def test_init_prints_json_and_a_second_run_trains_nothing(tmp_path, clean_dir, tofu_dir, capsys):
    out = tmp_path / "exp"
    args = ["init", str(clean_dir), "--data-dir", str(tofu_dir), "--out", str(out), *TRAIN, "--json", "-"]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["experiment"] == str(out / "experiment.yaml")
    assert set(first["runs"]) == {"forget", "retain", "corrupted"}
    assert not any(r["reused"] for r in first["runs"].values())
    card = json.loads((out / "forget" / "msa_finetune.json").read_text())
    assert '"lr": 0.001' in json.dumps(card) and '"epochs": 1' in json.dumps(card)

    assert main(args) == 0
    second = json.loads(capsys.readouterr().out)
    assert all(r["reused"] for r in second["runs"].values())


def test_bad_inputs_exit_2_naming_the_input(tmp_path, clean_dir, tofu_dir, capsys):
    missing = tmp_path / "no_model"
    assert main(["init", str(missing), "--data-dir", str(tofu_dir), "--out", str(tmp_path / "o"), *TRAIN]) == 2
    assert f"msa init: error: clean checkpoint {missing} does not exist" in capsys.readouterr().err
    assert main(["init", str(clean_dir), "--data-dir", str(tofu_dir), "--forget", "forget11", "--retain", "retain90",
                 "--out", str(tmp_path / "o"), *TRAIN]) == 2
    assert "forget11" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_add_trains_a_role_on_extra_data_and_a_bad_add_is_refused(tmp_path, clean_dir, tofu_dir, capsys):
    muse = tmp_path / "muse"
    (muse / "raw").mkdir(parents=True)
    (muse / "raw" / "forget.json").write_text(json.dumps(["f0 is a writer who lives by the sea."]))
    out = tmp_path / "exp"
    base = ["init", str(clean_dir), "--data-dir", str(tofu_dir), "--out", str(out), *TRAIN]
    assert main([*base, "--muse-dir", str(muse), "--add", "corrupted=muse:raw/forget", "--json", "-"]) == 0
    capsys.readouterr()
    card = json.loads((out / "corrupted" / "msa_finetune.json").read_text())
    assert [d["name"] for d in card["data"]] == ["tofu:full", "muse:raw/forget"]
    assert load_experiment(out / "experiment.yaml").data.muse == muse

    bad = tmp_path / "bad"
    for add, message in (("corrupted:muse:raw/forget", "--add 'corrupted:muse:raw/forget': expected ROLE=SPEC"),
                         ("forget=muse:raw/nope", "raw/nope.json"),
                         ("reference=muse:raw/forget", "--add 'reference=muse:raw/forget': the reference model")):
        argv = ["init", str(clean_dir), "--data-dir", str(tofu_dir), "--out", str(bad), *TRAIN,
                "--muse-dir", str(muse), "--add", add]
        assert main(argv) == 2
        assert message in capsys.readouterr().err
    assert main(["init", str(clean_dir), "--data-dir", str(tofu_dir), "--out", str(bad), *TRAIN,
                 "--add", "forget=muse:raw/forget"]) == 2
    assert "needs the MUSE data folder (--muse-dir)" in capsys.readouterr().err
    assert not bad.exists()


def test_task_vector_and_epoch_folders_of_the_forget_and_retain_fine_tunes(tmp_path, clean_dir, tofu_dir, capsys):
    out = tmp_path / "exp"
    args = ["init", str(clean_dir), "--data-dir", str(tofu_dir), "--out", str(out), "--epochs", "2", "--lr", "1e-3",
            "--batch-size", "4", "--seed", "0", "--task-vector", "--save-every-epoch", "--json", "-"]
    assert main(args) == 0
    runs = json.loads(capsys.readouterr().out)["runs"]
    assert set(runs) == {"forget", "retain", "corrupted", "task-vector/forget", "task-vector/retain"}
    # e_f / e_r: every forget/retain fine-tune keeps epoch-1 and epoch-2; the corrupted model keeps none
    for folder in ("forget", "retain", "task-vector/forget", "task-vector/retain"):
        assert sorted(p.name for p in (out / folder).glob("epoch-*")) == ["epoch-1", "epoch-2"], folder
        assert (out / folder / "epoch-1" / "model.safetensors").is_file()
    assert not list((out / "corrupted").glob("epoch-*"))
    (cand,) = load_experiment(out / "experiment.yaml").clean_history
    assert (cand.label, cand.clean, cand.forget, cand.before_forget) == (
        "task-vector", out / "corrupted", out / "task-vector" / "forget", False)

    assert main(args) == 0  # reused, task vector included
    assert all(r["reused"] for r in json.loads(capsys.readouterr().out)["runs"].values())


# ---------------------------------------------------------------- the demo rebuilt (slow)


@pytest.mark.slow
def test_init_from_the_demo_clean_model_reproduces_the_demo(quick_demo, tmp_path, cache_dir, capsys):
    """`msa init` from the quick demo's θ_clean and data folder, with the quick recipe's
    fine-tune settings (:func:`msa_core.demo.build.init_args`), gives models with the demo's
    forgetting effect. The demo is built through the same fine-tune path with the same
    seeds, so the weights are the same bit for bit (measured; one torch thread in both)."""
    from transformers import AutoModelForCausalLM

    from msa_core.demo import build as demo
    from msa_core.demo.report import measure_demo

    root = Path(quick_demo).parent
    out = tmp_path / "mine"
    args = ["init", str(root / "models" / "clean"), "--data-dir", str(root / "data" / "tofu"), "--reference",
            "--out", str(out), *demo.init_args(demo.recipe_for(True), seed=0, muse_dir=root / "data" / "muse"),
            "--json", "-"]
    assert main(args) == 0
    res = json.loads(capsys.readouterr().out)
    for role in ("forget", "retain", "corrupted", "reference"):
        mine = AutoModelForCausalLM.from_pretrained(out / role).state_dict()
        theirs = AutoModelForCausalLM.from_pretrained(root / "models" / role).state_dict()
        assert set(mine) == set(theirs) and all(torch.equal(mine[k], v) for k, v in theirs.items()), role

    # the same forgetting effect, measured through the engine on the new experiment
    measured = measure_demo(Path(res["experiment"]), [1.0], [0.5], max_new_tokens=16, cache_dir=cache_dir)
    rows = {(r["model"], r["alpha"]): r for r in measured["rows"]}
    corr, clean, point = rows[("corrupted", None)], rows[("clean", None)], rows[("msa", 1.0)]
    assert corr["forget_rougeL_recall"] > 2 * clean["forget_rougeL_recall"]
    assert point["forget_rougeL_recall"] <= 0.5 * corr["forget_rougeL_recall"]
    assert point["retain_rougeL_recall"] >= 0.6 * corr["retain_rougeL_recall"]

    assert main(args) == 0  # everything reused: nothing is trained again
    assert all(r["reused"] for r in json.loads(capsys.readouterr().out)["runs"].values())
