"""Checkpoint compatibility checks and safe loading: every mismatch names the tensor/field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from msa_core.checkpoints import check_compatible, checkpoint_fingerprint, read_tensor_index
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
