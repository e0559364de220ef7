"""The fused CPU kernel (msa_core.fused) through the engine: agreement with the eager path,
fallback on failure, warm-up without recompiles, flat views."""

from __future__ import annotations

import pytest
import torch

import msa_core.recompose as R
from msa_core import fused
from msa_core.engine import Engine
from msa_core.recompose import whole_tensor_reference


def _ulps_bf16(a: torch.Tensor, b: torch.Tensor) -> int:
    """Largest distance in representable bf16 steps (same-sign values; 0 when equal)."""
    ia, ib = a.view(torch.int16).int(), b.view(torch.int16).int()
    return int((ia - ib).abs().max()) if a.numel() else 0


@pytest.mark.parametrize("fixture", ["tiny_experiment", "tiny_experiment_bf16"])
def test_fused_kernel_agrees_with_eager_path(request, cache_dir, monkeypatch, fixture):
    exp = request.getfixturevalue(fixture)
    monkeypatch.delenv("MSA_FUSED_COMPOSE", raising=False)
    monkeypatch.setattr(R, "_FUSED_MIN", 0)  # the tiny model is far below the size threshold
    fused._reset_for_tests()
    engine = Engine.load(exp, cache_dir=cache_dir)
    for alpha, beta in [(1.5, 0.0), (0.0, 2.0), (2.5, 0.75)]:
        engine.set_coefficients(alpha, beta)
        if engine.compose_path != R.PATH_FUSED:
            pytest.skip(f"fused kernel unavailable here: {fused.disabled_reason()}")
        for p, want in zip(engine.plan.params, whole_tensor_reference(engine.plan, alpha, beta)):
            if p.dtype == torch.bfloat16:
                assert _ulps_bf16(p, want) <= 2, (alpha, beta)  # last-bit rounding only
            else:
                scale = 1 + abs(alpha) + abs(beta)
                assert torch.allclose(p, want, rtol=4e-7 * scale, atol=1e-7 * scale), (alpha, beta)
    engine.set_coefficients(0.0, 0.0)  # (0, 0) stays the plain, bit-exact copy
    assert all(torch.equal(p, b) for p, b in zip(engine.plan.params, engine.plan.pristine))


def test_fused_kernel_failure_falls_back_to_eager(tiny_experiment_bf16, cache_dir, monkeypatch):
    monkeypatch.delenv("MSA_FUSED_COMPOSE", raising=False)
    fused._reset_for_tests()

    def broken(use_a: bool, use_b: bool, family: str = "cpu"):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(fused, "_kernel", broken)
    monkeypatch.setattr(R, "_FUSED_MIN", 0)
    try:
        engine = Engine.load(tiny_experiment_bf16, cache_dir=cache_dir)
        engine.set_coefficients(2.5, 0.75)
        assert engine.compose_path == R.PATH_EAGER
        assert "no C++ compiler" in (fused.disabled_reason() or "")
        for p, want in zip(engine.plan.params, whole_tensor_reference(engine.plan, 2.5, 0.75)):
            assert torch.equal(p, want)
    finally:
        fused._reset_for_tests()


def test_fused_warm_up_compiles_before_the_first_move(tiny_experiment_bf16, cache_dir, monkeypatch):
    monkeypatch.delenv("MSA_FUSED_COMPOSE", raising=False)
    monkeypatch.setattr(R, "_FUSED_MIN", 0)
    fused._reset_for_tests()
    engine = Engine.load(tiny_experiment_bf16, cache_dir=cache_dir)
    thread = engine.warm_up_async()
    assert thread is not None
    thread.join(timeout=300)
    if fused.disabled_reason():
        pytest.skip(f"fused kernel unavailable here: {fused.disabled_reason()}")
    assert set(fused._KERNELS) == {("cpu", True, True), ("cpu", True, False), ("cpu", False, True)}
    from torch._dynamo.utils import counters

    graphs = counters["stats"]["unique_graphs"]
    engine.set_coefficients(2.5, 0.75)
    engine.set_coefficients(1.0, 0.0)
    engine.set_coefficients(0.0, 1.5)
    assert counters["stats"]["unique_graphs"] == graphs, "a real move recompiled after the warm-up"
    engine.set_coefficients(2.5, 0.75)
    assert engine.compose_path == R.PATH_FUSED
    for p, want in zip(engine.plan.params, whole_tensor_reference(engine.plan, 2.5, 0.75)):
        assert _ulps_bf16(p, want) <= 2
    monkeypatch.setattr(R, "_FUSED_MIN", 1 << 40)  # small models: no warm-up thread at all
    assert engine.warm_up_async() is None


def test_fused_prepare_builds_flat_views_once_or_refuses_strided_tensors():
    p, b = torch.zeros(64, 80), torch.ones(64, 80)
    f, r = torch.full((64, 80), 2.0), torch.full((64, 80), 3.0)
    views = fused.prepare([p], [b], [f], [r])
    assert views is not None
    assert all(v.dim() == 1 and v.data_ptr() == t.data_ptr() for v, t in zip(views[0], (p, b, f, r)))
    assert fused.prepare([p.t()], [b.t()], [f.t()], [r.t()]) is None  # not contiguous: the engine's eager path
