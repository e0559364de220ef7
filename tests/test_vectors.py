"""Forget/retain vectors: values, cache hit, invalidation, corruption recovery, NaN/Inf."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from msa_core.vectors import compute_vectors


def _files(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(next(Path(folder).glob("*.safetensors"))))


def test_vectors_equal_fp32_differences(tiny_experiment, cache_dir):
    vs = compute_vectors(tiny_experiment, cache_dir)
    c, f, r = (_files(getattr(tiny_experiment.checkpoints, k)) for k in ("clean", "forget", "retain"))
    assert set(vs.forget) == set(c)
    for n in c:
        assert torch.equal(vs.forget[n], f[n].float() - c[n].float())
        assert torch.equal(vs.retain[n], r[n].float() - c[n].float())
        assert vs.forget[n].dtype == torch.float32
        assert vs.norms[n]["forget"] == pytest.approx(float((f[n] - c[n]).norm()), rel=1e-5)


def test_bf16_vectors_computed_in_fp32(tiny_experiment_bf16, cache_dir):
    vs = compute_vectors(tiny_experiment_bf16, cache_dir)
    c, f = (_files(getattr(tiny_experiment_bf16.checkpoints, k)) for k in ("clean", "forget"))
    n = "model.layers.0.mlp.up_proj.weight"
    assert torch.equal(vs.forget[n], f[n].float() - c[n].float())
    # bf16 subtraction (what the reference script does) loses precision:
    assert not torch.equal(vs.forget[n], (f[n] - c[n]).float())


def test_second_run_hits_cache(tiny_experiment, cache_dir):
    first = compute_vectors(tiny_experiment, cache_dir)
    second = compute_vectors(tiny_experiment, cache_dir)
    assert not first.from_cache and second.from_cache and first.path == second.path
    for n in first.forget:
        assert torch.equal(first.forget[n], second.forget[n])


def test_changed_inputs_invalidate(tiny_experiment, cache_dir):
    first = compute_vectors(tiny_experiment, cache_dir)
    f = next(tiny_experiment.checkpoints.forget.glob("*.safetensors"))
    sd = load_file(str(f))
    sd = {k: v + 0.5 for k, v in sd.items()}
    save_file(sd, str(f), metadata={"format": "pt"})
    second = compute_vectors(tiny_experiment, cache_dir)
    assert second.fingerprint != first.fingerprint and not second.from_cache
    n = next(iter(sd))
    assert not torch.equal(first.forget[n], second.forget[n])


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "meta"])
def test_damaged_cache_is_rebuilt(tiny_experiment, cache_dir, damage):
    first = compute_vectors(tiny_experiment, cache_dir)
    target = first.path / "retain.safetensors"
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[:-100])
    elif damage == "flip":
        data = bytearray(target.read_bytes())
        data[-5] ^= 0xFF
        target.write_bytes(bytes(data))
    elif damage == "delete":
        target.unlink()
    else:
        (first.path / "meta.json").write_text("{not json")
    second = compute_vectors(tiny_experiment, cache_dir)
    assert not second.from_cache
    for n in first.retain:
        assert torch.equal(first.retain[n], second.retain[n])
    assert compute_vectors(tiny_experiment, cache_dir).from_cache


def test_nan_in_vector_named(tiny_experiment, cache_dir):
    f = next(tiny_experiment.checkpoints.forget.glob("*.safetensors"))
    sd = load_file(str(f))
    sd["model.layers.0.self_attn.q_proj.weight"][0, 0] = float("nan")
    save_file(sd, str(f), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"forget vector tensor model\.layers\.0\.self_attn\.q_proj\.weight has NaN/Inf"):
        compute_vectors(tiny_experiment, cache_dir)
    # nothing half-written is left that could be mistaken for a cache
    assert not any(p.name.endswith(".tmp") for p in (cache_dir / "vectors").iterdir())


def test_cache_meta_records_inputs(tiny_experiment, cache_dir):
    vs = compute_vectors(tiny_experiment, cache_dir)
    meta = json.loads((vs.path / "meta.json").read_text())
    assert meta["inputs"]["clean"] == str(tiny_experiment.checkpoints.clean)
    assert meta["dtype"] == "float32" and meta["num_tensors"] == len(vs.forget)
