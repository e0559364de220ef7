"""msa_core.export: the round trip, the overwrite rule, a full disk, no temp folder left
behind on success or on any failure, the module filter recorded in msa.json and the model
card, an engine without a tokenizer."""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import threading
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from msa_core import export as export_module
from msa_core.atomic import ASIDE_TAG, OWNER_FILE, TEMP_SUFFIX, temp_prefix
from msa_core.engine import Engine, ModuleFilter
from msa_core.export import export_model, is_export


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


def _resave_tokenizer(monkeypatch) -> None:
    """Make exports re-save the loaded tokenizer (as for a checkpoint without tokenizer files)
    instead of copying the checkpoint's files, so a failure of the tokenizers library can be staged."""
    monkeypatch.setattr(export_module, "original_files", lambda folder: [])


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _nothing_left(parent: Path, out: Path) -> bool:
    return [p.name for p in parent.iterdir() if p.name.startswith(temp_prefix(out))] == []


@pytest.mark.parametrize(
    "where, failure",
    [
        ("model", OSError(errno.ENOSPC, "No space left on device")),
        ("model", SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                                  'message: "No space left on device" })')),
        ("tokenizer", Exception("No space left on device (os error 28)")),  # what the tokenizers library raises
    ],
    ids=["oserror", "safetensors", "tokenizers"],
)
def test_a_full_disk_mid_export_is_one_clear_error_and_leaves_nothing(
    tiny_experiment, cache_dir, tmp_path, monkeypatch, where, failure
):
    engine = Engine.load(tiny_experiment, cache_dir=cache_dir)
    out = export_model(engine, 1.0, 0.0, tmp_path / "model")
    before = _files(out)

    def no_space(*args, **kwargs):
        raise failure

    owner = type(engine.model) if where == "model" else type(engine.tokenizer)
    if where == "tokenizer":
        _resave_tokenizer(monkeypatch)
    monkeypatch.setattr(owner, "save_pretrained", no_space)
    with pytest.raises(OSError, match=rf"exporting to {out} failed: not enough free space on {tmp_path} "
                                      r"\([\d,.]+ MB free, the export needs about [\d,.]+ MB\); nothing was written"):
        export_model(engine, 3.0, 0.0, out, force=True)
    assert _files(out) == before  # the previous export is untouched
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_any_other_write_failure_names_the_folder_and_leaves_nothing(tiny_experiment, cache_dir, tmp_path, monkeypatch):
    engine = Engine.load(tiny_experiment, cache_dir=cache_dir)

    def broken(*args, **kwargs):
        raise Exception("Permission denied (os error 13)")  # tokenizers' untyped I/O error

    _resave_tokenizer(monkeypatch)
    monkeypatch.setattr(type(engine.tokenizer), "save_pretrained", broken)
    out = tmp_path / "model"
    message = rf"exporting to {out} failed: Permission denied \(os error 13\); nothing was written"
    with pytest.raises(OSError, match=message):
        export_model(engine, 1.0, 0.0, out)
    assert not out.exists() and _nothing_left(tmp_path, out)


def test_too_little_free_space_is_refused_before_writing(tiny_experiment, cache_dir, tmp_path, monkeypatch):
    engine = Engine.load(tiny_experiment, cache_dir=cache_dir)
    written: list[str] = []
    monkeypatch.setattr(type(engine.model), "save_pretrained", lambda *a, **k: written.append("weights"))
    real_usage = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real_usage(p)._replace(free=10 * 2**20 // 100))
    out = tmp_path / "model"
    weights = sum(p.numel() * p.element_size() for p in engine.model.parameters())
    message = r"not enough free space .*\(0\.1 MB free, the export needs about [\d.]+ MB\)"
    with pytest.raises(OSError, match=message) as info:
        export_model(engine, 1.0, 0.0, out)
    assert info.value.errno == errno.ENOSPC
    needed = float(str(info.value).split("needs about ")[1].split(" MB")[0])
    assert needed * 2**20 >= weights  # the estimate covers at least the weights
    assert written == [] and not out.exists() and _nothing_left(tmp_path, out)


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

    _resave_tokenizer(monkeypatch)
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


# ---------------------------------------------------------------- never write over an input (case 2)


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_an_output_that_is_contains_or_is_inside_an_input_is_refused_before_writing(
    tiny_experiment, cache_dir, tmp_path
):
    from msa_core.experiment import load_experiment

    exp = load_experiment(tiny_experiment.checkpoints.clean.parent / "experiment.yaml")
    engine = Engine.load(exp, cache_dir=cache_dir)
    ckpt = tiny_experiment.checkpoints
    before = _tree(tmp_path / "ckpt")
    (tmp_path / "link").symlink_to(ckpt.corrupted)
    cases = {
        ckpt.corrupted: f"{ckpt.corrupted} is the corrupted checkpoint",
        ckpt.forget / "sub": f"{ckpt.forget / 'sub'} is inside the forget checkpoint",
        tmp_path / "ckpt": f"{tmp_path / 'ckpt'} contains the clean checkpoint",
        tmp_path / "link": f"{ckpt.corrupted} is the corrupted checkpoint",  # symlinks are resolved
        ckpt.reference: f"{ckpt.reference} is the reference checkpoint",
        engine.vectors.path: f"{engine.vectors.path} is inside the vector cache",
        cache_dir / "results.sqlite": f"{cache_dir / 'results.sqlite'} is the results store",
        cache_dir: f"{cache_dir} contains the vector cache",
    }
    for out, why in cases.items():
        with pytest.raises(ValueError, match=f"refusing to export to .*: {why} "):
            export_model(engine, 1.0, 0.0, out, force=True)
    assert _tree(tmp_path / "ckpt") == before  # every input byte-identical, experiment file included
    with pytest.raises(ValueError, match="is the experiment file"):
        export_model(engine, 1.0, 0.0, exp.source, force=True)
    store = tmp_path / "elsewhere" / "results.sqlite"  # a store the caller names
    with pytest.raises(ValueError, match=f"{store.parent} contains the app's results store"):
        export_model(engine, 1.0, 0.0, store.parent, protected={"the app's results store": store})
    ok = export_model(engine, 1.0, 0.0, cache_dir / "exports" / "m")  # the app's default export folder is fine
    assert is_export(ok)


def test_an_empty_output_path_is_refused_not_taken_as_the_current_folder(tiny_experiment, cache_dir, tmp_path,
                                                                          monkeypatch):
    engine = Engine.load(tiny_experiment, cache_dir=cache_dir)
    monkeypatch.chdir(tmp_path)
    for empty in ("", "  ", Path(""), "."):
        with pytest.raises(ValueError, match="the output folder is empty or '.'"):
            export_model(engine, 1.0, 0.0, empty, force=True)
    assert not (tmp_path / "msa.json").exists()


def test_force_replaces_only_a_previous_export_or_an_empty_folder(tiny_experiment, cache_dir, tmp_path):
    engine = Engine.load(tiny_experiment, cache_dir=cache_dir)
    thesis = tmp_path / "thesis"
    (thesis / "data").mkdir(parents=True)
    (thesis / "data" / "survey.csv").write_text("precious")
    with pytest.raises(FileExistsError, match=f"{thesis} exists and is not an MSA export \\(no msa.json\\); "
                                              "refusing to replace it, even with --force"):
        export_model(engine, 1.0, 0.0, thesis, force=True)
    assert (thesis / "data" / "survey.csv").read_text() == "precious" and _nothing_left(tmp_path, thesis)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert is_export(export_model(engine, 1.0, 0.0, empty, force=True))


# ---------------------------------------------------------------- a kill mid-replacement (case 3)


class _Killed(BaseException):
    """A simulated kill -9: from the kill on, every file-system step raises without acting."""


def test_a_kill_between_the_two_renames_is_repaired_by_the_next_export(
    tiny_experiment, cache_dir, tmp_path, monkeypatch, caplog
):
    engine = Engine.load(tiny_experiment, cache_dir=cache_dir)
    out = export_model(engine, 1.0, 0.0, tmp_path / "model")
    old = _tree(out)
    renames: list[tuple[str, str]] = []
    dead = [False]
    real_replace, real_rmtree, real_unlink = os.replace, shutil.rmtree, os.unlink

    def replace(src, dst, **kwargs):
        if dead[0]:
            raise _Killed
        renames.append((Path(src).name, Path(dst).name))
        real_replace(src, dst, **kwargs)
        if Path(dst).name.startswith(f".model.{ASIDE_TAG}"):  # the old copy just moved aside: die here
            dead[0] = True
            raise _Killed

    def dead_or(real):
        def step(*args, **kwargs):
            if dead[0]:
                raise _Killed
            return real(*args, **kwargs)
        return step

    with monkeypatch.context() as m:
        m.setattr(os, "replace", replace)
        m.setattr(shutil, "rmtree", dead_or(real_rmtree))
        m.setattr(os, "unlink", dead_or(real_unlink))
        with pytest.raises(_Killed):
            export_model(engine, 2.0, 0.0, out, force=True)
    # the state the issue found: nothing at the path, the old and the new copies both hidden beside it
    assert not out.exists()
    hidden = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(temp_prefix(out)))
    assert len(hidden) == 2 and any(h.startswith(f".model.{ASIDE_TAG}") for h in hidden)
    for h in hidden:  # the killed process is gone
        owner = tmp_path / h / OWNER_FILE
        if owner.exists():
            owner.write_text(json.dumps({"pid": 999_999_999, "start": None, "host": socket.gethostname()}))
    # the next export to that path restores the old copy, says so, and removes the dead one's temp folder
    with caplog.at_level("WARNING"), pytest.raises(FileExistsError, match="already exists"):
        export_model(engine, 3.0, 0.0, out)
    assert "restored the previous copy from an interrupted replacement" in caplog.text and str(out) in caplog.text
    assert _tree(out) == old and _nothing_left(tmp_path, out)
    export_model(engine, 3.0, 0.0, out, force=True)
    assert json.loads((out / "msa.json").read_text())["alpha"] == 3.0 and _nothing_left(tmp_path, out)
    assert not (out / OWNER_FILE).exists()


def test_stale_temp_folders_of_dead_exports_are_removed_and_live_ones_kept(tiny_experiment, cache_dir, tmp_path):
    engine = Engine.load(tiny_experiment, cache_dir=cache_dir)
    out = tmp_path / "model"
    me = socket.gethostname()
    stale, live, foreign = (tmp_path / f"{temp_prefix(out)}{tag}{TEMP_SUFFIX}" for tag in ("dead0001", "live0001",
                                                                                            "user0001"))
    for folder, pid in ((stale, 999_999_999), (live, os.getpid()), (foreign, None)):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"half")
        if pid is not None:
            (folder / OWNER_FILE).write_text(json.dumps({"pid": pid, "start": None, "host": me}))
    export_model(engine, 1.0, 0.0, out)
    assert not stale.exists() and live.exists() and foreign.exists()


# ---------------------------------------------------------------- the engine lock, tied weights


def test_files_are_written_outside_the_engine_lock(tiny_experiment, cache_dir, tmp_path, monkeypatch):
    engine = Engine.load(tiny_experiment, cache_dir=cache_dir)
    real_save = type(engine.model).save_pretrained
    free_while_writing: list[bool] = []

    def probe() -> None:
        free = engine.lock.acquire(blocking=False)
        if free:
            engine.lock.release()
        free_while_writing.append(free)

    def save(self, *args, **kwargs):
        other = threading.Thread(target=probe)  # another session, trying to take the engine
        other.start()
        other.join()
        return real_save(self, *args, **kwargs)

    monkeypatch.setattr(type(engine.model), "save_pretrained", save)
    out = export_model(engine, 1.5, 0.5, tmp_path / "model")
    assert free_while_writing == [True]  # another session could move α/β while the files were written
    sd = load_file(str(next(out.glob("*.safetensors"))))
    engine.set_coefficients(1.5, 0.5)
    assert all(torch.equal(sd[k], v) for k, v in engine.model.state_dict().items() if k in sd)


def test_tied_weights_export_once_and_reload(tiny_experiment_tied, cache_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    engine = Engine.load(tiny_experiment_tied, cache_dir=cache_dir)
    out = export_model(engine, 1.0, 0.5, tmp_path / "tied")
    sd = load_file(str(next(out.glob("*.safetensors"))))
    assert "lm_head.weight" not in sd  # written once, as the model expects
    model = AutoModelForCausalLM.from_pretrained(out)
    engine.set_coefficients(1.0, 0.5)
    assert torch.equal(model.lm_head.weight, engine.model.get_input_embeddings().weight)


# ---------------------------------------------------------------- files transformers 4.4x and 5 read alike


def _legacy_engine(tmp_path: Path, cache_dir: Path, **kwargs) -> Engine:
    from legacy_checkpoints import make_legacy_checkpoints

    return Engine.load(make_legacy_checkpoints(tmp_path / "ckpt"), cache_dir=cache_dir, **kwargs)


def test_an_export_keeps_the_checkpoints_config_tokenizer_and_chat_template_bytes(cache_dir, tmp_path):
    from legacy_checkpoints import MESSAGES, ROPE_SCALING, ROPE_THETA
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    engine = _legacy_engine(tmp_path, cache_dir)
    src = engine.experiment.checkpoints.corrupted
    out = export_model(engine, 1.5, 0.5, tmp_path / "unlearned")
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (out / name).read_bytes() == (src / name).read_bytes(), name
    config = json.loads((out / "config.json").read_text())
    assert config["rope_theta"] == ROPE_THETA and config["rope_scaling"] == ROPE_SCALING  # the legacy keys, kept
    assert "rope_parameters" not in config and not (out / "chat_template.jinja").exists()
    info = json.loads((out / "msa.json").read_text())
    assert info["dtype"] == "float32" and "config.json" in info["copied_from_corrupted"]
    # transformers 5 reads the copied files as the engine's own model and tokenizer
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok.apply_chat_template(MESSAGES, add_generation_prompt=True, return_dict=True, return_tensors="pt")
    want_ids = engine.tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, return_dict=True,
                                                    return_tensors="pt")
    assert torch.equal(ids["input_ids"], want_ids["input_ids"])
    with torch.no_grad(), engine.session(1.5, 0.5) as live:
        want = live(ids["input_ids"]).logits
        got = model(ids["input_ids"]).logits
    assert model.config.rope_parameters["rope_theta"] == ROPE_THETA
    assert model.config.rope_parameters["rope_type"] == "llama3"
    assert torch.equal(got, want)
    gen = pipeline("text-generation", model=str(out), max_new_tokens=3, do_sample=False)
    assert gen("Where was Ana Lenz born?")[0]["generated_text"].startswith("Where was Ana Lenz born?")


def test_a_bf16_export_of_an_fp32_checkpoint_changes_only_the_configs_dtype(cache_dir, tmp_path):
    engine = _legacy_engine(tmp_path, cache_dir, dtype="bfloat16")
    src = engine.experiment.checkpoints.corrupted
    out = export_model(engine, 1.0, 0.0, tmp_path / "bf16")
    original = json.loads((src / "config.json").read_text())
    written = json.loads((out / "config.json").read_text())
    assert written == {**original, "torch_dtype": "bfloat16"}
    assert {t.dtype for t in load_file(str(next(out.glob("*.safetensors")))).values()} == {torch.bfloat16}
    assert (out / "tokenizer_config.json").read_bytes() == (src / "tokenizer_config.json").read_bytes()


def test_exported_files_and_folders_get_normal_modes_whatever_the_checkpoints_modes(cache_dir, tmp_path):
    import stat

    from msa_core import atomic
    from msa_core.atomic import DIR_MODE, FILE_MODE

    engine = _legacy_engine(tmp_path, cache_dir)
    for p in engine.experiment.checkpoints.corrupted.iterdir():
        p.chmod(0o600)  # a private checkpoint: the export's modes are not copied from it
    out = export_model(engine, 1.0, 0.5, tmp_path / "shared")
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*")}
    assert stat.S_IMODE(out.stat().st_mode) == DIR_MODE
    assert modes and all(m == (DIR_MODE if (out / n).is_dir() else FILE_MODE) for n, m in modes.items()), modes
    if atomic._UMASK == 0o022:  # the usual umask: files 0644, folders 0755
        assert FILE_MODE == 0o644 and DIR_MODE == 0o755


def test_the_model_card_has_the_hub_metadata_and_a_model_index_of_the_metrics(cache_dir, tmp_path):
    from huggingface_hub import ModelCard
    from legacy_checkpoints import HUB_ID

    engine = _legacy_engine(tmp_path, cache_dir)
    metrics = {"forget_quality": 0.25, "model_utility": 0.5, "muse_privleak": -12.5, "note": "text",
               "bad": float("nan")}
    out = export_model(engine, 2.0, 0.5, tmp_path / "card", metrics=metrics, metrics_from="results store: fast tier")
    card = ModelCard.load(out / "README.md")
    data = card.data
    assert data.library_name == "transformers" and data.base_model == HUB_ID and data.base_model_relation == "merge"
    assert {"msa", "unlearning", "model-state-arithmetic"} <= set(data.tags)
    got = {(e.metric_type, e.metric_value, e.dataset_type) for e in data.eval_results}
    assert got == {("forget_quality", 0.25, "tofu"), ("model_utility", 0.5, "tofu"), ("muse_privleak", -12.5, "muse")}
    assert "α (forget) | 2.0" in card.text and "(results store: fast tier)" in card.text
    assert json.loads((out / "msa.json").read_text())["metrics_from"] == "results store: fast tier"
    # no metrics: no model-index; a checkpoint that names no hub id: no base_model
    cfg_path = engine.experiment.checkpoints.corrupted / "config.json"
    cfg_path.write_text(json.dumps({**json.loads(cfg_path.read_text()), "_name_or_path": str(tmp_path / "local")}))
    bare = ModelCard.load(export_model(engine, 2.0, 0.5, tmp_path / "bare") / "README.md").data
    assert bare.eval_results is None and bare.base_model is None and getattr(bare, "base_model_relation", None) is None
    assert bare.library_name == "transformers"


def test_the_base_model_is_read_from_a_hub_cache_path_or_a_hub_like_name(tmp_path):
    from msa_core.export import base_model_id

    snapshot = tmp_path / "hub" / "models--meta-llama--Llama-3.2-1B-Instruct" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    assert base_model_id(snapshot) == "meta-llama/Llama-3.2-1B-Instruct"
    local = tmp_path / "ft"
    local.mkdir()
    hub = "open-unlearning/tofu_Llama-3.2-1B-Instruct_full"
    for name, want in [(hub, hub), ("/abs/path/model", None), ("./relative", None), ("a/b/c", None), ("plain", None)]:
        (local / "config.json").write_text(json.dumps({"_name_or_path": name}))
        assert base_model_id(local) == want, name


def test_msa_compose_records_the_metrics_stored_for_that_point(cache_dir, tmp_path, capsys):
    from eval_fixtures import write_tofu
    from tiny import make_checkpoints

    from msa_core import cli
    from msa_core.eval.run import evaluate
    from msa_core.eval.store import ResultStore
    from msa_core.experiment import DataConfig, save_experiment

    exp = make_checkpoints(tmp_path / "ckpt")
    exp = type(exp)(name="compose-metrics", checkpoints=exp.checkpoints,
                    data=DataConfig(tofu=write_tofu(tmp_path / "tofu"), forget_split="forget10",
                                    retain_split="retain_perturbed", holdout_split="holdout10"))
    yaml_path = tmp_path / "experiment.yaml"
    save_experiment(exp, yaml_path)
    engine = Engine.load(exp, cache_dir=cache_dir)
    stored = evaluate(engine, 1.0, 0.5, tier="fast", store=ResultStore())
    out = tmp_path / "composed"
    assert cli.main(["compose", str(yaml_path), "--alpha", "1", "--beta", "0.5", "--out", str(out), "--quiet"]) == 0
    info = json.loads((out / "msa.json").read_text())
    assert info["metrics"] == pytest.approx(stored.flat(), nan_ok=True) and info["metrics"]
    assert info["metrics_from"] == "results store: fast tier, benchmark all"
    # a point with nothing stored: no metrics, as before
    assert cli.main(["compose", str(yaml_path), "--alpha", "2", "--out", str(tmp_path / "other"), "--quiet"]) == 0
    assert json.loads((tmp_path / "other" / "msa.json").read_text())["metrics"] == {}


def test_files_written_by_transformers_5_get_the_legacy_keys_and_read_the_same(cache_dir, tmp_path):
    from legacy_checkpoints import CHAT_TEMPLATE, MESSAGES, ROPE_SCALING, ROPE_THETA, make_v5_checkpoints
    from transformers import AutoModelForCausalLM, AutoTokenizer

    engine = Engine.load(make_v5_checkpoints(tmp_path / "ckpt"), cache_dir=cache_dir)
    src = engine.experiment.checkpoints.corrupted
    out = export_model(engine, 1.5, 0.5, tmp_path / "unlearned")
    original, config = (json.loads((d / "config.json").read_text()) for d in (src, out))
    assert config == {**original, "rope_theta": ROPE_THETA, "rope_scaling": ROPE_SCALING, "torch_dtype": "float32"}
    tok_cfg = json.loads((out / "tokenizer_config.json").read_text())
    assert tok_cfg["tokenizer_class"] == "PreTrainedTokenizerFast" and tok_cfg["chat_template"] == CHAT_TEMPLATE
    assert (out / "chat_template.jinja").read_bytes() == (src / "chat_template.jinja").read_bytes()
    assert json.loads((out / "msa.json").read_text())["legacy_keys_written"] == ["config.json", "tokenizer_config.json"]
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.rope_parameters == {**ROPE_SCALING, "rope_theta": ROPE_THETA}
    ids = tok.apply_chat_template(MESSAGES, add_generation_prompt=True, return_dict=True, return_tensors="pt")
    with torch.no_grad(), engine.session(1.5, 0.5) as live:
        assert torch.equal(model(ids["input_ids"]).logits, live(ids["input_ids"]).logits)
