"""Checkpoint folders: tensor index, sharded indexes, .bin files and safe loading; every error
names the file and the tensor or key. The attention-backend guard, with fake ``flash_attn``
modules (no GPU: the CUDA device is only a name here)."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import json
import logging
import re
import sys
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny import rewrite_weights, weights_file

import msa_core.checkpoints as C
from msa_core.checkpoints import attention_backend, load_model, load_tokenizer, read_tensor_index
from msa_core.compatibility import check_compatible
from msa_core.vectors import compute_vectors


def test_truncated_safetensors_named(tiny_experiment, cache_dir):
    f = weights_file(tiny_experiment.checkpoints.retain)
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"truncated safetensors"):
        compute_vectors(tiny_experiment, cache_dir)


def test_corrupt_header_named(tiny_experiment):
    f = weights_file(tiny_experiment.checkpoints.clean)
    data = bytearray(f.read_bytes())
    data[8:20] = b"not json!!!!"
    f.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=str(f.name)):
        read_tensor_index(tiny_experiment.checkpoints.clean)


def test_bin_checkpoints_read_without_unpickling(tiny_experiment, tmp_path):
    """A .bin holding only tensors loads with weights_only=True; one with code is refused."""
    folder = tmp_path / "binmodel"
    folder.mkdir()
    (folder / "config.json").write_text((tiny_experiment.checkpoints.clean / "config.json").read_text())
    sd = load_file(str(weights_file(tiny_experiment.checkpoints.clean)))
    torch.save(sd, folder / "pytorch_model.bin")
    assert set(read_tensor_index(folder)) == set(sd)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, folder / "pytorch_model.bin")
    with pytest.raises(ValueError, match="cannot read weights safely"):
        read_tensor_index(folder)


def _shard(folder: Path, weight_map) -> Path:
    """Turn a one-file checkpoint into a 'sharded' one with the given index content."""
    f = weights_file(folder)
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


@pytest.mark.parametrize("name", ["special_tokens_map.json", "tokenizer_config.json", "merges.txt"])
def test_invalid_utf8_tokenizer_file_is_named_when_loading(tiny_experiment, name):
    path = tiny_experiment.checkpoints.corrupted / name
    path.write_bytes(b'{"eos_token": "\xc3("}')
    with pytest.raises(ValueError, match=rf"corrupted/{name}: not valid UTF-8 \(byte 0xc3 at offset 15\)"):
        load_tokenizer(tiny_experiment.checkpoints.corrupted)


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
    rewrite_weights(folder, lambda sd: {k: v for k, v in sd.items() if k != "lm_head.weight"})
    with pytest.raises(ValueError, match=r"clean: the weights lack 1 tensor\(s\) the model needs, e.g. \['lm_head"):
        load_model(folder)


# ----------------------------------------------------------------------------- attention backend

CUDA = torch.device("cuda:0")


def _good_flash_attn() -> types.ModuleType:
    mod = types.ModuleType("flash_attn")
    mod.flash_attn_func = lambda *a, **k: None  # type: ignore[attr-defined]
    return mod


class _FailingFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds ``flash_attn`` and raises ``exc`` when it is executed (a broken CUDA extension)."""

    def __init__(self, exc: BaseException):
        self.exc = exc

    def find_spec(self, name, path=None, target=None):
        return importlib.machinery.ModuleSpec(name, self) if name == "flash_attn" else None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        raise self.exc


def _choose(caplog, device, dtype) -> tuple[str, list[logging.LogRecord]]:
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="msa_core.checkpoints"):
        choice = attention_backend(device, dtype)
    return choice, [r for r in caplog.records if r.name == "msa_core.checkpoints"]


def test_attention_flash_only_on_cuda_in_half_precision(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "flash_attn", _good_flash_attn())
    monkeypatch.setattr(C, "_transformers_has_fa2", lambda: True)
    choice, logs = _choose(caplog, CUDA, torch.bfloat16)
    assert choice == "flash_attention_2" and len(logs) == 1 and logs[0].levelno == logging.INFO
    assert _choose(caplog, CUDA, torch.float16)[0] == "flash_attention_2"
    # --dtype float32 with flash-attn installed: sdpa, one info line giving the reason
    choice, logs = _choose(caplog, CUDA, torch.float32)
    assert choice == "sdpa" and len(logs) == 1 and logs[0].levelno == logging.INFO
    assert "float32" in logs[0].getMessage() and "float16 or bfloat16" in logs[0].getMessage()
    choice, logs = _choose(caplog, torch.device("cpu"), torch.bfloat16)
    assert choice == "sdpa" and len(logs) == 1 and "needs CUDA" in logs[0].getMessage()


def test_attention_without_flash_attn_is_sdpa_quietly(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "flash_attn", None)  # import raises ModuleNotFoundError('flash_attn')
    choice, logs = _choose(caplog, CUDA, torch.bfloat16)
    assert choice == "sdpa" and len(logs) == 1 and logs[0].levelno == logging.INFO
    assert "not installed" in logs[0].getMessage()


@pytest.mark.parametrize("exc,shown", [
    (ImportError("libcudart.so.12: undefined symbol: _ZN3c10"), "undefined symbol"),
    (OSError("libc10_cuda.so: cannot open shared object file"), "cannot open shared object"),
    (ModuleNotFoundError("No module named 'flash_attn_2_cuda'", name="flash_attn_2_cuda"), "flash_attn_2_cuda"),
    (RuntimeError("CUDA driver version is insufficient"), "driver version"),
])
def test_broken_flash_attn_install_warns_and_uses_sdpa(monkeypatch, caplog, exc, shown):
    monkeypatch.delitem(sys.modules, "flash_attn", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_FailingFinder(exc), *sys.meta_path])
    choice, logs = _choose(caplog, CUDA, torch.bfloat16)
    assert choice == "sdpa" and len(logs) == 1 and logs[0].levelno == logging.WARNING
    assert shown in logs[0].getMessage() and "flash-attn is installed but unusable" in logs[0].getMessage()


def test_flash_attn_missing_its_symbol_or_unsupported_by_transformers_is_sdpa(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "flash_attn", types.ModuleType("flash_attn"))  # no flash_attn_func
    choice, logs = _choose(caplog, CUDA, torch.bfloat16)
    assert choice == "sdpa" and logs[0].levelno == logging.WARNING and "flash_attn_func" in logs[0].getMessage()
    monkeypatch.setitem(sys.modules, "flash_attn", _good_flash_attn())
    monkeypatch.setattr(C, "_transformers_has_fa2", lambda: False)
    choice, logs = _choose(caplog, CUDA, torch.bfloat16)
    assert choice == "sdpa" and len(logs) == 1 and "transformers reports" in logs[0].getMessage()


def test_load_model_logs_its_attention_choice_once(tiny_experiment, caplog):
    with caplog.at_level(logging.INFO, logger="msa_core.checkpoints"):
        model = load_model(tiny_experiment.checkpoints.corrupted, device="cpu", dtype=torch.float32)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("attention:")]
    assert lines == ["attention: sdpa (device cpu; flash-attention 2 needs CUDA)"]
    assert model.config._attn_implementation == "sdpa"
