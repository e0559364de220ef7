"""Exact rounding and mixed-dtype checkpoint sets: the compose reads θ_corrupted as stored and
rounds once to the engine's dtype, on the eager, threaded and fused CPU paths.

The checkpoints hold values on coarse binary grids, so that every fp32 step of the compose
(τ = θ_x − θ_clean, θ_c − α·τ_f, + β·τ_r with α = 1.5, β = 0.75) is exact: the float64 oracle
``(c64 − α·(f64 − cl64) + β·(r64 − cl64)).to(dtype)`` is then THE correctly rounded value, and
any difference is a double rounding (θ_c rounded to the model dtype first) or a wrong input.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny import rewrite_weights, weights_file

import msa_core.recompose as R
from msa_core import fused
from msa_core.engine import Engine
from msa_core.experiment import Experiment
from msa_core.recompose import whole_tensor_reference

ALPHA, BETA = 1.5, 0.75
# Grids (integer range, power-of-two step) per role: θ_clean has ≤ 8 significant bits (exact in
# bf16 and fp16), θ_forget = θ_clean + a 2^-10 grid (≤ 11 bits: exact in fp16), θ_retain =
# θ_clean + a 2^-16 grid and θ_corrupted a 2^-20 grid (fp32). The composed value is a multiple of
# 2^-20 below 2 in magnitude: 21 bits, exact in fp32, and rounding it to bf16 is not trivial.
_CLEAN = (2**7, 7)
_FORGET_DELTA = (2**9, 10)
_RETAIN_DELTA = (2**9, 16)
_CORRUPTED = (2**20, 20)


def _grid(shape: torch.Size, gen: torch.Generator, spec: tuple[int, int]) -> torch.Tensor:
    bound, step = spec
    return torch.randint(-bound + 1, bound, tuple(shape), generator=gen, dtype=torch.int64).double() * 2.0**-step


def _exact_set(exp: Experiment, dtypes: dict[str, torch.dtype]) -> Experiment:
    """Rewrite the tiny checkpoints with grid values, each role stored in ``dtypes[role]``."""
    like = load_file(str(weights_file(exp.checkpoints.clean)))
    gen = torch.Generator().manual_seed(7)
    clean = {k: _grid(v.shape, gen, _CLEAN) for k, v in like.items()}
    values = {
        "clean": clean,
        "forget": {k: v + _grid(v.shape, gen, _FORGET_DELTA) for k, v in clean.items()},
        "retain": {k: v + _grid(v.shape, gen, _RETAIN_DELTA) for k, v in clean.items()},
        "corrupted": {k: _grid(v.shape, gen, _CORRUPTED) for k, v in clean.items()},
    }
    for role, tensors in values.items():
        dtype = dtypes[role]
        stored = {k: v.to(dtype) for k, v in tensors.items()}
        assert all(torch.equal(stored[k].double(), v) for k, v in tensors.items()), f"{role} grid not exact in {dtype}"
        rewrite_weights(getattr(exp.checkpoints, role), lambda sd, stored=stored: stored)
    return exp


def _oracle(exp: Experiment, dtype: torch.dtype, *, round_corrupted_first: bool = False) -> dict[str, torch.Tensor]:
    """float64 arithmetic on the stored values, rounded once to ``dtype`` (or, to show what the
    test catches, with θ_corrupted rounded to ``dtype`` first)."""
    roles = ("clean", "corrupted", "forget", "retain")
    sd = {r: load_file(str(weights_file(getattr(exp.checkpoints, r)))) for r in roles}
    out = {}
    for k, c in sd["corrupted"].items():
        c64 = c.to(dtype).double() if round_corrupted_first else c.double()
        cl = sd["clean"][k].double()
        out[k] = (c64 - ALPHA * (sd["forget"][k].double() - cl) + BETA * (sd["retain"][k].double() - cl)).to(dtype)
    return out


def _mismatches(engine: Engine, want: dict[str, torch.Tensor]) -> dict[str, int]:
    params = dict(engine.model.named_parameters())
    bad = {k: int((params[k].detach() != w).sum()) for k, w in want.items() if k in params}
    assert len(bad) == len(params), "every parameter is compared"
    return {k: n for k, n in bad.items() if n}


FP32_SET = {"clean": torch.float32, "forget": torch.float32, "retain": torch.float32, "corrupted": torch.float32}
MIXED_SET = {"clean": torch.bfloat16, "forget": torch.float16, "retain": torch.float32, "corrupted": torch.float32}


@pytest.fixture
def fp32_set(tiny_experiment) -> Experiment:
    return _exact_set(tiny_experiment, FP32_SET)


@pytest.fixture
def mixed_set(tiny_experiment) -> Experiment:
    return _exact_set(tiny_experiment, MIXED_SET)


def _eager(monkeypatch, threads: int) -> None:
    monkeypatch.setenv("MSA_FUSED_COMPOSE", "0")
    if threads > 1:  # the sliced, threaded path, with odd slice sizes
        monkeypatch.setattr(R, "CPU_STEP_ELEMENTS", 97)
        monkeypatch.setattr(R, "_CPU_ITEM_SLICES", 3)
        monkeypatch.setattr(R, "_CPU_THREADED_MIN", 0)
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)


@pytest.mark.parametrize("threads", [1, 2])
def test_fp32_checkpoints_in_a_bf16_model_are_rounded_once(fp32_set, cache_dir, monkeypatch, threads):
    _eager(monkeypatch, threads)
    want = _oracle(fp32_set, torch.bfloat16)
    twice = _oracle(fp32_set, torch.bfloat16, round_corrupted_first=True)
    # The inputs tell the two apart: rounding θ_c to bf16 first changes many elements.
    assert sum(int((want[k] != twice[k]).sum()) for k in want) > 100
    engine = Engine.load(fp32_set, cache_dir=cache_dir, dtype="bfloat16")
    assert engine.dtype == torch.bfloat16
    assert {b.dtype for b in engine.plan.pristine} == {torch.float32}  # θ_c kept as stored
    engine.set_coefficients(ALPHA, BETA)
    assert engine.compose_path == R.PATH_EAGER
    assert _mismatches(engine, want) == {}
    assert all(torch.equal(p, w) for p, w in zip(engine.plan.params, whole_tensor_reference(engine.plan, ALPHA, BETA)))
    engine.set_coefficients(0.0, 0.0)  # (0, 0): θ_c rounded once, i.e. what the model loaded
    assert _mismatches(engine, {k: v.to(torch.bfloat16) for k, v in load_file(
        str(weights_file(fp32_set.checkpoints.corrupted))).items()}) == {}


def test_fp32_checkpoints_in_a_bf16_model_are_rounded_once_by_the_fused_kernel(fp32_set, cache_dir, monkeypatch):
    monkeypatch.delenv("MSA_FUSED_COMPOSE", raising=False)
    monkeypatch.setattr(R, "_FUSED_MIN", 0)  # the tiny model is far below the size threshold
    fused._reset_for_tests()
    try:
        engine = Engine.load(fp32_set, cache_dir=cache_dir, dtype="bfloat16")
        assert engine.plan.warm_up_async() is not None
        engine.set_coefficients(ALPHA, BETA)
        if engine.compose_path != R.PATH_FUSED:
            pytest.skip(f"fused kernel unavailable here: {fused.disabled_reason()}")
        assert _mismatches(engine, _oracle(fp32_set, torch.bfloat16)) == {}
    finally:
        fused._reset_for_tests()


def test_the_extra_memory_of_an_fp32_corrupted_checkpoint_is_reported(fp32_set, cache_dir):
    engine = Engine.load(fp32_set, cache_dir=cache_dir, dtype="bfloat16")
    params = sum(p.numel() for p in engine.plan.params)
    assert engine.plan.memory_bytes()["pristine"] == 4 * params  # fp32 θ_c: 4 bytes per parameter, not 2
    assert engine.plan.bytes_per_move == (2 + 4 + 4 + 4) * params  # write w (bf16), read θ_c, τ_f, τ_r (fp32)


def test_a_checkpoint_in_the_model_dtype_keeps_the_loaded_copy(tiny_experiment_bf16, cache_dir):
    engine = Engine.load(tiny_experiment_bf16, cache_dir=cache_dir)
    assert engine.dtype == torch.bfloat16 and {b.dtype for b in engine.plan.pristine} == {torch.bfloat16}


@pytest.mark.parametrize("dtype", [None, "bfloat16", "float16"], ids=["default", "bf16", "fp16"])
@pytest.mark.parametrize("threads", [1, 2])
def test_a_mixed_dtype_set_composes_and_is_rounded_once_to_the_chosen_dtype(
    mixed_set, cache_dir, monkeypatch, dtype, threads
):
    _eager(monkeypatch, threads)
    engine = Engine.load(mixed_set, cache_dir=cache_dir, dtype=dtype)
    # default: the corrupted checkpoint's dtype (fp32 here); otherwise the dtype asked for
    out = {None: torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    assert engine.dtype == out and engine.compat is not None and engine.compat.dtypes["clean"] == "bfloat16"
    engine.set_coefficients(ALPHA, BETA)
    assert _mismatches(engine, _oracle(mixed_set, out)) == {}


def test_a_mixed_dtype_set_exports_the_rounded_weights(mixed_set, cache_dir, tmp_path):
    from msa_core.export import export_model

    engine = Engine.load(mixed_set, cache_dir=cache_dir, dtype="bfloat16")
    out = export_model(engine, ALPHA, BETA, tmp_path / "mixed")
    written = load_file(str(next(Path(out).glob("*.safetensors"))))
    want = _oracle(mixed_set, torch.bfloat16)
    assert set(written) == set(want) and all(torch.equal(written[k], want[k]) for k in want)
