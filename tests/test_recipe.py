"""The MSA recipe (msa_core.recipe): which splits each fine-tune uses, input checks, reuse, experiment.yaml."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest

from msa_core.experiment import load_experiment
from msa_core.finetune import TrainConfig, load_training_data, retain_ft_indices
from msa_core.recipe import (
    MARKER,
    Stages,
    init_experiment,
    load_stage_data,
    parse_extra_data,
    parse_role_settings,
)

CONFIG = TrainConfig(epochs=1, lr=1e-3, batch_size=4, seed=0)


def _items(prefix: str, n: int) -> list[dict[str, str]]:
    return [{"question": f"What is {prefix} {i}?", "answer": f"It is {prefix} {i}."} for i in range(n)]


@pytest.fixture
def tofu_dir(tmp_path) -> Path:
    """A TOFU-format folder: 4 forget items, 40 retain items (the 10% sample has 4)."""
    folder = tmp_path / "tofu"
    folder.mkdir()
    forget, retain = _items("forget", 4), _items("retain", 40)
    files = {"forget10": forget, "retain90": retain, "full": forget + retain, "retain_perturbed": retain[:5]}
    for name, items in files.items():
        (folder / f"{name}.json").write_text(json.dumps(items))
    return folder


def test_the_stages_follow_the_reference_recipe_names():
    assert Stages().specs() == {"forget": "tofu:forget10", "retain": "tofu:retain90_ft", "corrupted": "tofu:full"}
    assert Stages(forget="forget05", reference=True).specs() == {
        "forget": "tofu:forget05", "retain": "tofu:retain95_ft", "corrupted": "tofu:full", "reference": "tofu:retain95"}
    assert Stages(forget="forget01", full=None, corrupted=Path("/m")).specs() == {
        "forget": "tofu:forget01", "retain": "tofu:retain99_ft"}
    assert Stages(forget="my_forget", retain="my_retain").specs()["retain"] == "tofu:my_retain_ft"


@pytest.mark.parametrize(("stages", "message"), [
    (Stages(forget="my_forget"), "--forget 'my_forget': no matching retain split"),
    (Stages(full=None), "no corrupted model"),
    (Stages(corrupted=Path("/m")), "either a full split"),
    (Stages(forget="../x"), "--forget"),
])
def test_impossible_stages_are_refused_naming_the_option(stages, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        stages.specs()


def test_the_retain_model_trains_on_the_seeded_forget_sized_sample(tofu_dir):
    data = load_stage_data(tofu_dir, Stages())
    retain = json.loads((tofu_dir / "retain90.json").read_text())
    picked = retain_ft_indices(len(retain), 4, seed=42)
    assert [len(sets) for sets in data.values()] == [1, 1, 1]
    assert data["retain"][0].pairs == tuple((retain[i]["question"], retain[i]["answer"]) for i in picked)
    assert len(data["forget"][0].pairs) == 4 and len(data["corrupted"][0].pairs) == 44


def test_a_missing_clean_folder_is_named_before_anything_is_made(tmp_path, tofu_dir):
    with pytest.raises(FileNotFoundError, match=f"clean checkpoint {tmp_path / 'nope'} does not exist"):
        init_experiment(tmp_path / "nope", tofu_dir, tmp_path / "out", config=CONFIG)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        init_experiment(tmp_path / "empty", tofu_dir, tmp_path / "out", config=CONFIG)
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    with pytest.raises(ValueError, match=f"{bert} is not a causal language model"):
        init_experiment(bert, tofu_dir, tmp_path / "out", config=CONFIG)
    assert not (tmp_path / "out").exists()


def test_an_unknown_split_is_named_before_anything_is_trained(tmp_path, clean_dir, tofu_dir):
    with pytest.raises((KeyError, FileNotFoundError, ValueError), match="forget11"):
        init_experiment(clean_dir, tofu_dir, tmp_path / "out", Stages(forget="forget11", retain="retain90"),
                        config=CONFIG)
    assert not (tmp_path / "out").exists()
    with pytest.raises(FileNotFoundError, match=f"data folder {tmp_path / 'none'} does not exist"):
        init_experiment(clean_dir, tmp_path / "none", tmp_path / "out", config=CONFIG)


def test_a_folder_not_made_by_init_is_refused(tmp_path, clean_dir, tofu_dir):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError, match=f"{mine} exists, is not empty and was not made by `msa init`"):
        init_experiment(clean_dir, tofu_dir, mine, config=CONFIG)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_init_writes_the_experiment_and_a_second_run_reuses_every_model(tmp_path, clean_dir, tofu_dir):
    out = tmp_path / "out"
    first = init_experiment(clean_dir, tofu_dir, out, Stages(reference=True), config=CONFIG)
    assert first.experiment == out / "experiment.yaml" and (out / MARKER).is_file()
    assert set(first.runs) == {"forget", "retain", "corrupted", "reference"}
    assert not any(r.reused for r in first.runs.values())
    exp = load_experiment(first.experiment)
    assert exp.checkpoints.clean == clean_dir
    assert {role: p for role, p in exp.checkpoints.as_dict().items() if role != "clean"} == {
        role: out / role for role in ("corrupted", "forget", "retain", "reference")}
    assert (exp.data.tofu, exp.data.forget_split, exp.data.retain_split) == (tofu_dir, "forget10", "retain_perturbed")
    for role in first.runs:
        assert (out / role / "model.safetensors").is_file() and (out / role / "config.json").is_file()
    retain_sig = load_training_data("tofu:retain90_ft", tofu_dir).signature
    assert retain_sig in (out / "retain" / "msa_finetune.json").read_text()

    mtimes = {role: (out / role / "model.safetensors").stat().st_mtime_ns for role in first.runs}
    again = init_experiment(clean_dir, tofu_dir, out, Stages(reference=True), config=CONFIG)
    assert all(r.reused for r in again.runs.values())
    assert {role: (out / role / "model.safetensors").stat().st_mtime_ns for role in again.runs} == mtimes


def test_an_existing_corrupted_model_is_used_as_is(tmp_path, clean_dir, tofu_dir):
    out = tmp_path / "out"
    res = init_experiment(clean_dir, tofu_dir, out, Stages(full=None, corrupted=clean_dir), config=CONFIG)
    assert set(res.runs) == {"forget", "retain"} and not (out / "corrupted").exists()
    assert load_experiment(res.experiment).checkpoints.corrupted == clean_dir


def test_role_settings_replace_fields_of_one_fine_tune():
    got = parse_role_settings(CONFIG, ["forget.lr=3e-4", "forget.epochs=24", "retain.save_every_epoch=true"])
    assert got == {"forget": replace(CONFIG, lr=3e-4, epochs=24), "retain": replace(CONFIG, save_every_epoch=True)}
    assert parse_role_settings(CONFIG, []) == {}


@pytest.mark.parametrize(("item", "message"), [
    ("forget.lr", "expected ROLE.FIELD=VALUE"),
    ("clean.lr=1", "unknown role 'clean'"),
    ("forget.learning_rate=1", "TrainConfig has no field 'learning_rate'"),
    ("forget.epochs=ten", "'ten' is not a valid int"),
])
def test_bad_role_settings_are_named(item, message):
    with pytest.raises(ValueError, match=re.escape(f"--set {item!r}: {message}")):
        parse_role_settings(CONFIG, [item])


def test_stages_fine_tuned_beforehand_with_msa_finetune_are_reused(tmp_path, clean_dir, tofu_dir):
    from msa_core.finetune import finetune

    out = tmp_path / "out"
    before = finetune(clean_dir, load_training_data("tofu:forget10", tofu_dir), out / "forget", CONFIG)
    res = init_experiment(clean_dir, tofu_dir, out, config=CONFIG)
    assert res.runs["forget"].reused and not res.runs["retain"].reused
    assert res.runs["forget"].out == before.out


def test_on_real_tofu_the_stages_have_the_reference_sizes(shared_data):
    data = load_stage_data(shared_data / "tofu", Stages(reference=True))
    assert {role: len(d[0].pairs) for role, d in data.items()} == {
        "forget": 400, "retain": 360, "corrupted": 4000, "reference": 3600}


# ---------------------------------------------------------------- extra data (--add, --muse-dir)


@pytest.fixture
def muse_dir(tmp_path) -> Path:
    """A MUSE-format folder with raw biographies (and privleak texts, so data.muse loads)."""
    folder = tmp_path / "muse"
    (folder / "raw").mkdir(parents=True)
    (folder / "privleak").mkdir()
    bios = {"forget": ["Ann Vole writes sea novels in Tarsk.", "Bo Lark paints."],
            "retain": ["Cy Moss bakes bread in Ulm.", "Di Fen flies planes."]}
    for name, texts in bios.items():
        (folder / "raw" / f"{name}.json").write_text(json.dumps(texts))
    for name in ("forget", "retain", "holdout"):
        (folder / "privleak" / f"{name}.json").write_text(json.dumps(bios.get(name, ["Ed Holm is a poet."])))
    return folder


def test_extra_data_is_trained_on_and_reaches_the_card(tmp_path, clean_dir, tofu_dir, muse_dir):
    extra = parse_extra_data(["corrupted=muse:raw/forget", "corrupted=muse:raw/retain", "forget=muse:raw/forget"])
    assert extra == {"corrupted": ("muse:raw/forget", "muse:raw/retain"), "forget": ("muse:raw/forget",)}
    stages = Stages(extra=extra)
    assert stages.all_specs()["corrupted"] == ("tofu:full", "muse:raw/forget", "muse:raw/retain")
    out = tmp_path / "out"
    res = init_experiment(clean_dir, tofu_dir, out, stages, config=CONFIG, muse_dir=muse_dir)
    card = json.loads((out / "corrupted" / "msa_finetune.json").read_text())
    assert [d["name"] for d in card["data"]] == ["tofu:full", "muse:raw/forget", "muse:raw/retain"]
    bio_sig = load_training_data("muse:raw/forget", muse_dir).signature
    assert bio_sig in json.dumps(card["data"]) and bio_sig in (out / "forget" / "msa_finetune.json").read_text()
    assert [d["name"] for d in json.loads((out / "retain" / "msa_finetune.json").read_text())["data"]] == [
        "tofu:retain90_ft"]
    assert load_experiment(res.experiment).data.muse == muse_dir
    assert json.loads((out / MARKER).read_text())["extra"]["corrupted"] == ["muse:raw/forget", "muse:raw/retain"]

    # reuse covers the extra data: the same run reuses all; a changed biography retrains its roles
    assert all(r.reused for r in init_experiment(clean_dir, tofu_dir, out, stages, config=CONFIG,
                                                 muse_dir=muse_dir).runs.values())
    (muse_dir / "raw" / "forget.json").write_text(json.dumps(["Ann Vole writes sea poems in Tarsk."]))
    again = init_experiment(clean_dir, tofu_dir, out, stages, config=CONFIG, muse_dir=muse_dir)
    assert {role for role, r in again.runs.items() if not r.reused} == {"corrupted", "forget"}


@pytest.mark.parametrize(("item", "message"), [
    ("corrupted", "expected ROLE=SPEC"),
    ("=muse:raw/forget", "expected ROLE=SPEC"),
    ("clean=muse:raw/forget", "unknown role 'clean'"),
    ("forget=raw/forget", "data spec 'raw/forget': expected tofu:SPLIT"),
    ("forget=muse:../x", "data spec 'muse:../x'"),
])
def test_bad_extra_data_is_named(item, message):
    with pytest.raises(ValueError, match=re.escape(f"--add {item!r}: {message}")):
        parse_extra_data([item])


def test_extra_data_for_a_role_not_trained_or_without_a_muse_folder_is_refused(tmp_path, tofu_dir, muse_dir):
    with pytest.raises(ValueError, match=re.escape("--add 'reference=muse:raw/retain': the reference model is not")):
        load_stage_data(tofu_dir, Stages(extra={"reference": ("muse:raw/retain",)}), muse_dir)
    with pytest.raises(ValueError, match=re.escape("--add forget=muse:raw/forget: a muse: spec needs the MUSE data")):
        load_stage_data(tofu_dir, Stages(extra={"forget": ("muse:raw/forget",)}))
    with pytest.raises(FileNotFoundError, match="raw/holdout.json"):
        load_stage_data(tofu_dir, Stages(extra={"forget": ("muse:raw/holdout",)}), muse_dir)


def test_the_task_vector_candidate_fine_tunes_the_corrupted_model_and_is_written(tmp_path, clean_dir, tofu_dir):
    from msa_core.recipe import TASK_VECTOR

    out = tmp_path / "out"
    first = init_experiment(clean_dir, tofu_dir, out, config=CONFIG, task_vector=True)
    assert set(first.runs) == {"forget", "retain", "corrupted", "task-vector/forget", "task-vector/retain"}
    exp = load_experiment(first.experiment)
    (cand,) = exp.clean_history
    assert (cand.label, cand.before_forget, cand.step) == (TASK_VECTOR, False, None)
    assert cand.clean == out / "corrupted" == exp.checkpoints.corrupted
    assert (cand.forget, cand.retain) == (out / "task-vector" / "forget", out / "task-vector" / "retain")
    for role in ("forget", "retain"):
        card = json.loads((out / "task-vector" / role / "msa_finetune.json").read_text())
        default_card = json.loads((out / role / "msa_finetune.json").read_text())
        # the same data and settings as the default role, from the corrupted model instead of θ_clean
        assert card["base"] == str(out / "corrupted") and default_card["base"] == str(clean_dir)
        assert card["data"] == default_card["data"] and card["config"] == default_card["config"]

    mtimes = {r: (out / r / "model.safetensors").stat().st_mtime_ns for r in first.runs}
    again = init_experiment(clean_dir, tofu_dir, out, config=CONFIG, task_vector=True)
    assert all(r.reused for r in again.runs.values())
    assert {r: (out / r / "model.safetensors").stat().st_mtime_ns for r in again.runs} == mtimes
    assert load_experiment(again.experiment).clean_history == exp.clean_history


def test_without_the_task_vector_no_history_is_written(tmp_path, clean_dir, tofu_dir):
    res = init_experiment(clean_dir, tofu_dir, tmp_path / "out", Stages(full=None, corrupted=clean_dir), config=CONFIG)
    assert load_experiment(res.experiment).clean_history == ()
