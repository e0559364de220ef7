"""Checkpoint compatibility checks and safe loading: every mismatch names the tensor/field."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from msa_core import checkpoints
from msa_core.checkpoints import (
    check_compatible,
    checkpoint_fingerprint,
    load_model,
    load_tokenizer,
    read_tensor_index,
)
from msa_core.safetensors_stream import read_header
from msa_core.vectors import compute_vectors


def _weights(folder: Path) -> Path:
    return next(Path(folder).glob("*.safetensors"))


def _rewrite(folder: Path, fn) -> None:
    f = _weights(folder)
    sd = load_file(str(f))
    save_file(fn(sd), str(f), metadata={"format": "pt"})


def test_compatible_set_passes(tiny_experiment):
    report = check_compatible(tiny_experiment)
    assert report.ok and report.num_parameters > 0 and report.architecture == "LlamaForCausalLM"


def test_missing_tensor_named(tiny_experiment):
    _rewrite(tiny_experiment.checkpoints.forget,
             lambda sd: {k: v for k, v in sd.items() if "layers.1.mlp.up_proj" not in k})
    with pytest.raises(ValueError, match=r"forget: tensor model\.layers\.1\.mlp\.up_proj\.weight missing"):
        check_compatible(tiny_experiment)


def test_extra_tensor_named(tiny_experiment):
    _rewrite(tiny_experiment.checkpoints.retain, lambda sd: {**sd, "model.extra.weight": torch.zeros(3)})
    with pytest.raises(ValueError, match=r"retain: extra tensor model\.extra\.weight"):
        check_compatible(tiny_experiment)


def test_shape_mismatch_named(tiny_experiment):
    def widen(sd):
        sd = dict(sd)
        sd["model.norm.weight"] = torch.ones(33)
        return sd

    _rewrite(tiny_experiment.checkpoints.clean, widen)
    with pytest.raises(ValueError, match=r"clean: tensor model\.norm\.weight has shape \[33\]"):
        check_compatible(tiny_experiment)


def test_dtype_mismatch_named(tiny_experiment):
    _rewrite(tiny_experiment.checkpoints.forget,
             lambda sd: {k: v.to(torch.bfloat16) if "norm" in k else v for k, v in sd.items()})
    with pytest.raises(ValueError, match=r"forget: tensor .*norm.* has dtype bfloat16"):
        check_compatible(tiny_experiment)


def test_architecture_mismatch_named(tiny_experiment):
    cfg_path = tiny_experiment.checkpoints.retain / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["architectures"] = ["MistralForCausalLM"]
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="retain: architecture MistralForCausalLM differs"):
        check_compatible(tiny_experiment)


def test_tokenizer_mismatch_named(tiny_experiment):
    tj = tiny_experiment.checkpoints.forget / "tokenizer.json"
    data = json.loads(tj.read_text())
    vocab = data["model"]["vocab"]
    first = next(iter(vocab))
    vocab["zzz_new_token"] = vocab.pop(first)
    tj.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="forget: tokenizer vocabulary differs"):
        check_compatible(tiny_experiment)


def test_truncated_safetensors_named(tiny_experiment, cache_dir):
    f = _weights(tiny_experiment.checkpoints.retain)
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"truncated safetensors"):
        compute_vectors(tiny_experiment, cache_dir)


def test_corrupt_header_named(tiny_experiment):
    f = _weights(tiny_experiment.checkpoints.clean)
    data = bytearray(f.read_bytes())
    data[8:20] = b"not json!!!!"
    f.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=str(f.name)):
        read_tensor_index(tiny_experiment.checkpoints.clean)


def test_fingerprint_changes_with_content(tiny_experiment):
    before = checkpoint_fingerprint(tiny_experiment.checkpoints.forget)
    _rewrite(tiny_experiment.checkpoints.forget, lambda sd: {k: v * 1.01 for k, v in sd.items()})
    assert checkpoint_fingerprint(tiny_experiment.checkpoints.forget) != before


def test_bin_checkpoints_read_without_unpickling(tiny_experiment, tmp_path):
    """A .bin holding only tensors loads with weights_only=True; one with code is refused."""
    folder = tmp_path / "binmodel"
    folder.mkdir()
    (folder / "config.json").write_text((tiny_experiment.checkpoints.clean / "config.json").read_text())
    sd = load_file(str(_weights(tiny_experiment.checkpoints.clean)))
    torch.save(sd, folder / "pytorch_model.bin")
    assert set(read_tensor_index(folder)) == set(sd)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, folder / "pytorch_model.bin")
    with pytest.raises(ValueError, match="cannot read weights safely"):
        read_tensor_index(folder)


# ---------------------------------------------------------------- issue 16: content fingerprints (case 6)


def _rewrite_in_place(f: Path, name: str, value: float) -> None:
    """Overwrite one tensor's bytes inside the file, keeping its size, header and mtime."""
    st = f.stat()
    header = read_header(f)
    e = header.entries[name]
    with open(f, "r+b") as fh:
        fh.seek(header.data_start + e.begin)
        fh.write(torch.full(e.shape, value).numpy().tobytes())
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = f.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (st.st_size, st.st_mtime_ns, st.st_ino)
    assert read_header(f) == header


def test_in_place_rewrite_with_same_size_mtime_and_header_changes_the_fingerprint_and_rebuilds_vectors(
    tiny_experiment, cache_dir
):
    first = compute_vectors(tiny_experiment, cache_dir)
    assert compute_vectors(tiny_experiment, cache_dir).from_cache
    folder = tiny_experiment.checkpoints.forget
    before = checkpoint_fingerprint(folder)
    _rewrite_in_place(_weights(folder), "model.norm.weight", 2.0)
    assert checkpoint_fingerprint(folder) != before
    again = compute_vectors(tiny_experiment, cache_dir)
    assert not again.from_cache and again.fingerprint != first.fingerprint
    clean = load_file(str(_weights(tiny_experiment.checkpoints.clean)))["model.norm.weight"]
    assert torch.equal(again.forget["model.norm.weight"], 2.0 - clean)  # the new bytes, not the stale cache


def test_cached_digest_is_not_reused_after_an_in_place_rewrite(tiny_experiment, monkeypatch):
    monkeypatch.setattr(checkpoints, "_RACY_NS", 0)  # cache even just-written files
    monkeypatch.setattr(checkpoints, "_DIGESTS", {})
    folder = tiny_experiment.checkpoints.retain
    before = checkpoint_fingerprint(folder)
    assert len(checkpoints._DIGESTS) == 1 and checkpoint_fingerprint(folder) == before  # cached, same answer
    time.sleep(0.05)  # the rewrite's ctime must fall in a later clock tick than the hash
    _rewrite_in_place(_weights(folder), "model.norm.weight", 3.0)
    assert checkpoint_fingerprint(folder) != before
    assert len(checkpoints._DIGESTS) == 2


def test_fingerprint_covers_tokenizer_files(tiny_experiment):
    folder = tiny_experiment.checkpoints.clean
    before = checkpoint_fingerprint(folder)
    cfg = folder / "tokenizer_config.json"
    cfg.write_text(cfg.read_text() + " ")
    assert checkpoint_fingerprint(folder) != before


# ---------------------------------------------------------------- issue 16: JSON of the wrong type (case 14)


def _shard(folder: Path, weight_map) -> Path:
    """Turn a one-file checkpoint into a 'sharded' one with the given index content."""
    f = _weights(folder)
    f.rename(folder / "model-00001-of-00001.safetensors")
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps(weight_map if not callable(weight_map) else weight_map(index)))
    return index


def test_sharded_index_is_read(tiny_experiment):
    folder = tiny_experiment.checkpoints.clean
    names = list(read_tensor_index(folder))
    _shard(folder, {"metadata": {}, "weight_map": {n: "model-00001-of-00001.safetensors" for n in names}})
    assert list(read_tensor_index(folder)) == names
    check_compatible(tiny_experiment)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ([1, 2], r"model.safetensors.index.json: expected a JSON object at the top level, got a list"),
        ({"weight_map": ["model-00001-of-00001.safetensors"]},
         r"index.json: 'weight_map' must be an object .* got a list"),
        ({"weight_map": {"model.norm.weight": 3}}, r"index.json: weight_map\['model.norm.weight'\] must be a shard"),
        ({"weight_map": {"model.norm.weight": None}}, r"index.json: weight_map\['model.norm.weight'\] must be a"),
        ({"weight_map": {}}, r"index.json: 'weight_map' lists no tensors"),
        ({"weight_map": {"model.norm.weight": "../clean/model.safetensors"}}, r"points outside the model folder"),
        ({"weight_map": {"model.nope.weight": "model-00001-of-00001.safetensors"}},
         r"index.json: weight_map puts tensor model.nope.weight in model-00001-of-00001.safetensors, which does not"),
    ],
)
def test_sharded_index_of_the_wrong_structure_names_file_and_key(tiny_experiment, content, message):
    folder = tiny_experiment.checkpoints.forget
    _shard(folder, content)
    with pytest.raises(ValueError, match=message):
        read_tensor_index(folder)
    with pytest.raises(ValueError, match=message):
        check_compatible(tiny_experiment)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("config.json", [1], r"retain/config.json: expected a JSON object at the top level, got a list"),
        ("config.json", {"architectures": "LlamaForCausalLM"}, r"retain/config.json: 'architectures' must be a non"),
        ("config.json", {"model_type": 3}, r"retain/config.json: 'model_type' must be a string"),
        ("tokenizer.json", [1], r"retain/tokenizer.json: expected a JSON object at the top level, got a list"),
        ("tokenizer.json", {"model": [1]}, r"retain/tokenizer.json: 'model' must be an object, got a list"),
    ],
)
def test_config_or_tokenizer_json_of_the_wrong_type_names_the_file(tiny_experiment, name, content, message):
    (tiny_experiment.checkpoints.retain / name).write_text(json.dumps(content))
    with pytest.raises(ValueError, match=message):
        check_compatible(tiny_experiment)


def test_config_value_of_the_wrong_type_names_file_and_key(tiny_experiment):
    cfg_path = tiny_experiment.checkpoints.corrupted / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["hidden_size"] = "32"
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"corrupted/config.json: hidden_size must be a positive integer, got '32'"):
        check_compatible(tiny_experiment)


def test_tokenizer_json_of_the_wrong_type_is_named_when_loading(tiny_experiment):
    folder = tiny_experiment.checkpoints.corrupted
    (folder / "tokenizer_config.json").write_text("[]")
    with pytest.raises(ValueError, match=r"corrupted/tokenizer_config.json: expected a JSON object"):
        load_tokenizer(folder)
    (folder / "tokenizer_config.json").write_text("{}")
    tj = folder / "tokenizer.json"
    data = json.loads(tj.read_text())
    data["model"]["vocab"] = [1, 2]  # well-formed JSON the tokenizers library cannot read
    tj.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"corrupted: cannot load tokenizer"):
        load_tokenizer(folder)


def test_bin_that_is_not_a_state_dict_is_named(tiny_experiment, tmp_path):
    folder = tmp_path / "binmodel"
    folder.mkdir()
    (folder / "config.json").write_text((tiny_experiment.checkpoints.clean / "config.json").read_text())
    torch.save([torch.zeros(2)], folder / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"pytorch_model.bin: expected a state dict .* got a list"):
        read_tensor_index(folder)
    torch.save({"a": 3}, folder / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"pytorch_model.bin: entry 'a' is a int, expected a tensor"):
        read_tensor_index(folder)


def test_tensor_stored_in_two_files_is_refused(tiny_experiment):
    folder = tiny_experiment.checkpoints.reference
    save_file({"model.norm.weight": torch.ones(32)}, str(folder / "zz-extra.safetensors"))
    with pytest.raises(ValueError, match=r"tensor model.norm.weight is stored twice, in model.safetensors and zz-"):
        read_tensor_index(folder)


# ---------------------------------------------------------------- issue 16: invalid UTF-8 (case 10)


@pytest.mark.parametrize("name", ["config.json", "tokenizer.json"])
def test_invalid_utf8_json_names_file_byte_and_offset(tiny_experiment, name):
    path = tiny_experiment.checkpoints.forget / name
    path.write_bytes(b'{"a": "\xff"}')
    with pytest.raises(ValueError, match=rf"forget/{name}: not valid UTF-8 \(byte 0xff at offset 7\)"):
        check_compatible(tiny_experiment)


@pytest.mark.parametrize("name", ["special_tokens_map.json", "tokenizer_config.json", "merges.txt"])
def test_invalid_utf8_tokenizer_file_is_named_when_loading(tiny_experiment, name):
    path = tiny_experiment.checkpoints.corrupted / name
    path.write_bytes(b'{"eos_token": "\xc3("}')
    with pytest.raises(ValueError, match=rf"corrupted/{name}: not valid UTF-8 \(byte 0xc3 at offset 15\)"):
        load_tokenizer(tiny_experiment.checkpoints.corrupted)


# ---------------------------------------------------------------- issue 16: config contradicting the weights (case 15)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("num_key_value_heads", 4, r"num_key_value_heads=4 × head_dim=8, hidden_size=32\) implies tensor "
         r"model.layers.0.self_attn.k_proj.weight of shape \[32, 32\], but .*model.safetensors has \[16, 32\]"),
        ("intermediate_size", 48, r"intermediate_size=48, hidden_size=32\) implies tensor "
         r"model.layers.0.mlp.down_proj.weight of shape \[32, 48\], but .* has \[32, 64\] \(5 more tensors"),
        ("vocab_size", 999, r"vocab_size=999, hidden_size=32\) implies tensor lm_head.weight of shape \[999, 32\]"),
        ("hidden_size", 64, r"implies tensor .* of shape .*64"),
        ("num_hidden_layers", 3, r"says num_hidden_layers=3, but the weights in .* have layers 0..1 \(2 in all\)"),
    ],
)
def test_config_that_contradicts_the_weights_is_reported_by_role_and_tensor(tiny_experiment, key, value, message):
    for folder in tiny_experiment.checkpoints.as_dict().values():  # all share the mistake: no cross-role diff
        cfg_path = folder / "config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg[key] = value
        cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"not compatible:\n  corrupted: config.json \(?.*" + message):
        check_compatible(tiny_experiment)


def test_load_errors_of_any_kind_become_a_value_error_naming_the_folder(tiny_experiment):
    folder = tiny_experiment.checkpoints.clean
    cfg_path = folder / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["num_key_value_heads"] = 4  # shapes the loader cannot fit: RuntimeError inside transformers
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=rf"{re.escape(str(folder))}: cannot load model \(RuntimeError: "):
        load_model(folder)


def test_weights_missing_from_every_role_are_not_silently_initialised(tiny_experiment):
    folder = tiny_experiment.checkpoints.clean
    _rewrite(folder, lambda sd: {k: v for k, v in sd.items() if k != "lm_head.weight"})
    with pytest.raises(ValueError, match=r"clean: the weights lack 1 tensor\(s\) the model needs, e.g. \['lm_head"):
        load_model(folder)
