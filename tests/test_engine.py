"""The live engine: composition against an independent float64 reference, no drift,
no input mutation, tied weights, module filters, coefficient validation, locking, side
models and the memory report. The arithmetic's paths are in test_recompose.py and
test_fused.py."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from msa_core.engine import Engine, ModuleFilter
from msa_core.experiment import replace_ranges


def _files(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def _reference(exp, alpha: float, beta: float) -> dict[str, torch.Tensor]:
    """θ_c − α(θ_f − θ_0) + β(θ_r − θ_0) in float64, straight from the files."""
    c, f, r, z = (_files(getattr(exp.checkpoints, k)) for k in ("corrupted", "forget", "retain", "clean"))
    return {
        n: c[n].double() - alpha * (f[n].double() - z[n].double()) + beta * (r[n].double() - z[n].double()) for n in c
    }


def _param_by_file_name(engine: Engine) -> dict[str, torch.Tensor]:
    sd = engine.model.state_dict()
    return {k: v for k, v in sd.items()}


POINTS = [(0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (2.5, 0.5), (0.3, 4.0)]


@pytest.mark.parametrize("alpha,beta", POINTS)
def test_fp32_composition_matches_float64_reference(tiny_experiment, cache_dir, alpha, beta):
    engine = Engine.load(tiny_experiment, cache_dir=cache_dir)
    engine.set_coefficients(alpha, beta)
    ref = _reference(tiny_experiment, alpha, beta)
    got = _param_by_file_name(engine)
    for name, want in ref.items():
        err = (got[name].double() - want).abs().max().item()
        tol = 4 * torch.finfo(torch.float32).eps * max(1.0, want.abs().max().item()) * (1 + abs(alpha) + abs(beta))
        assert err <= tol, f"{name}: max abs err {err} > {tol}"


def test_zero_coefficients_reproduce_corrupted_bit_exactly(tiny_experiment, cache_dir):
    engine = Engine.load(tiny_experiment, cache_dir=cache_dir)
    engine.set_coefficients(3.0, 2.0)
    engine.set_coefficients(0.0, 0.0)
    corrupted = _files(tiny_experiment.checkpoints.corrupted)
    got = _param_by_file_name(engine)
    for name, t in corrupted.items():
        assert torch.equal(got[name], t), name


@pytest.mark.parametrize("alpha,beta", [(0.0, 0.0), (1.0, 0.0), (1.5, 1.0)])
def test_bf16_composition_within_bf16_rounding(tiny_experiment_bf16, cache_dir, alpha, beta):
    engine = Engine.load(tiny_experiment_bf16, cache_dir=cache_dir)
    assert engine.dtype == torch.bfloat16
    engine.set_coefficients(alpha, beta)
    ref = _reference(tiny_experiment_bf16, alpha, beta)
    got = _param_by_file_name(engine)
    for name, want in ref.items():
        # The fp32 arithmetic is exact to ~1e-7; the only loss is the final cast to bf16
        # (round-to-nearest: half an ulp, 2^-8 relative).
        expected = want.float().to(torch.bfloat16)
        within = (got[name].double() - want).abs().le(want.abs() * 2**-8 + 1e-30).all()
        assert torch.equal(got[name], expected) or within, name
    if (alpha, beta) == (0.0, 0.0):
        corrupted = _files(tiny_experiment_bf16.checkpoints.corrupted)
        for name, t in corrupted.items():
            assert torch.equal(got[name], t), name


def test_no_drift_in_any_order(tiny_experiment, cache_dir):
    engine = Engine.load(tiny_experiment, cache_dir=cache_dir)
    engine.set_coefficients(1.25, 0.75)
    first = {k: v.clone() for k, v in engine.model.state_dict().items()}
    for a, b in [(4.0, 0.0), (0.1, 3.3), (1.25, 0.0), (5.0, 5.0), (0.0, 0.0)] * 3:
        engine.set_coefficients(a, b)
    engine.set_coefficients(1.25, 0.75)
    for k, v in engine.model.state_dict().items():
        assert torch.equal(v, first[k]), k


def test_inputs_never_modified(tiny_experiment, cache_dir):
    before = {r: _files(p) for r, p in tiny_experiment.checkpoints.as_dict().items()}
    engine = Engine.load(tiny_experiment, cache_dir=cache_dir)
    vf = {k: v.clone() for k, v in engine.vectors.forget.items()}
    for a, b in [(1, 1), (5, 0), (2, 3)]:
        engine.set_coefficients(a, b)
    after = {r: _files(p) for r, p in tiny_experiment.checkpoints.as_dict().items()}
    for r in before:
        for k in before[r]:
            assert torch.equal(before[r][k], after[r][k]), (r, k)
    for k, v in engine.vectors.forget.items():
        assert torch.equal(v, vf[k]), k


def test_tied_embeddings_composed_once(tiny_experiment_tied, cache_dir):
    engine = Engine.load(tiny_experiment_tied, cache_dir=cache_dir)
    assert engine.model.lm_head.weight.data_ptr() == engine.model.model.embed_tokens.weight.data_ptr()
    engine.set_coefficients(2.0, 1.0)
    ref = _reference(tiny_experiment_tied, 2.0, 1.0)
    got = engine.model.model.embed_tokens.weight.double()
    assert (got - ref["model.embed_tokens.weight"]).abs().max() < 1e-5
    assert torch.equal(engine.model.lm_head.weight, engine.model.model.embed_tokens.weight)


def test_buffers_left_alone(tiny_experiment, cache_dir):
    engine = Engine.load(tiny_experiment, cache_dir=cache_dir)
    bufs = {k: v.clone() for k, v in engine.model.named_buffers()}
    engine.set_coefficients(3.0, 1.0)
    for k, v in engine.model.named_buffers():
        assert torch.equal(v, bufs[k]), k


def test_module_filter_limits_changes(tiny_experiment, cache_dir):
    only = ModuleFilter(include=r"mlp", layers=(1, 1))
    engine = Engine.load(tiny_experiment, cache_dir=cache_dir, module_filter=only)
    engine.set_coefficients(2.0, 1.0)
    corrupted = _files(tiny_experiment.checkpoints.corrupted)
    ref = _reference(tiny_experiment, 2.0, 1.0)
    for name, t in engine.model.state_dict().items():
        if "layers.1.mlp" in name:
            assert (t.double() - ref[name]).abs().max() < 1e-5, name
        elif name in corrupted:
            assert torch.equal(t, corrupted[name]), name


def test_module_filter_rejects_bad_regex():
    with pytest.raises(ValueError, match="include"):
        ModuleFilter(include="(")
    with pytest.raises(ValueError, match="layers"):
        ModuleFilter(layers=(5, 2))


@pytest.mark.parametrize(
    "alpha,beta,field", [(float("nan"), 0, "alpha"), (0, float("inf"), "beta"), (6.0, 0, "alpha"), (0, -1, "beta")]
)
def test_bad_coefficients_rejected(tiny_experiment, cache_dir, alpha, beta, field):
    engine = Engine.load(tiny_experiment, cache_dir=cache_dir)
    engine.set_coefficients(1.0, 1.0)
    before = {k: v.clone() for k, v in engine.model.state_dict().items()}
    with pytest.raises(ValueError, match=field):
        engine.set_coefficients(alpha, beta)
    assert (engine.alpha, engine.beta) == (1.0, 1.0)
    for k, v in engine.model.state_dict().items():
        assert torch.equal(v, before[k])


def test_negative_coefficients_allowed_with_configured_range(tiny_experiment, cache_dir):
    exp = replace_ranges(tiny_experiment, alpha_range=(-2.0, 5.0), beta_range=(-1.0, 1.0))
    engine = Engine.load(exp, cache_dir=cache_dir)
    engine.set_coefficients(-1.0, -0.5)
    ref = _reference(tiny_experiment, -1.0, -0.5)
    for name, t in engine.model.state_dict().items():
        if name in ref:
            assert (t.double() - ref[name]).abs().max() < 1e-5


def test_unchanged_coefficients_skip_work(tiny_experiment, cache_dir):
    engine = Engine.load(tiny_experiment, cache_dir=cache_dir)
    assert engine.set_coefficients(1.0, 0.5) > 0
    assert engine.set_coefficients(1.0, 0.5) == 0.0


def test_sessions_are_serialised(tiny_experiment, cache_dir):
    """Two threads composing and reading at once each see their own weights."""
    engine = Engine.load(tiny_experiment, cache_dir=cache_dir)
    name = "model.layers.0.mlp.up_proj.weight"
    expected = {}
    for a in (0.5, 3.0):
        engine.set_coefficients(a, 0.0)
        expected[a] = engine.model.state_dict()[name].clone()
    errors: list[str] = []

    def worker(a: float) -> None:
        for _ in range(30):
            with engine.session(a, 0.0) as model:
                w = model.state_dict()[name]
                if not torch.equal(w, expected[a]):
                    errors.append(f"alpha={a} saw foreign weights")

    threads = [threading.Thread(target=worker, args=(a,)) for a in (0.5, 3.0)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_side_models_and_memory(tiny_experiment, cache_dir):
    engine = Engine.load(tiny_experiment, cache_dir=cache_dir)
    ref = engine.side_model("reference")
    want = _files(tiny_experiment.checkpoints.reference)
    for k, v in ref.state_dict().items():
        if k in want:
            assert torch.equal(v, want[k])
    assert engine.side_model("reference") is ref
    with pytest.raises(ValueError, match="unknown model role"):
        engine.side_model("nonsense")
    mem = engine.memory_bytes()
    assert mem["vectors"] == 2 * mem["working_model"]  # fp32 model, fp32 vectors
    assert mem["side:reference"] == mem["working_model"]


# ---------------------------------------------------------------- issue 16: finiteness, filters, devices


def _poke(folder: Path, name: str, index: tuple[int, ...], value: float) -> None:
    """Set one element of one tensor of a checkpoint folder's safetensors file, in place."""
    from safetensors.torch import save_file

    f = next(Path(folder).glob("*.safetensors"))
    sd = load_file(str(f))
    sd[name][index] = value
    save_file(sd, str(f), metadata={"format": "pt"})


UP = "model.layers.0.mlp.up_proj.weight"


def test_nan_in_corrupted_checkpoint_is_named_at_load(tiny_experiment, cache_dir):
    _poke(tiny_experiment.checkpoints.corrupted, UP, (0, 0), float("nan"))
    folder = str(tiny_experiment.checkpoints.corrupted)
    with pytest.raises(ValueError, match=rf"corrupted checkpoint {folder}: tensor {UP} has NaN/Inf values"):
        Engine.load(tiny_experiment, cache_dir=cache_dir)


def test_inf_in_a_side_model_is_named_and_the_model_not_kept(tiny_experiment, cache_dir):
    _poke(tiny_experiment.checkpoints.reference, UP, (1, 2), float("inf"))
    engine = Engine.load(tiny_experiment, cache_dir=cache_dir)
    folder = str(tiny_experiment.checkpoints.reference)
    with pytest.raises(ValueError, match=rf"reference checkpoint {folder}: tensor {UP} has NaN/Inf values"):
        engine.side_model("reference")
    assert engine.loaded_side_models() == []
    assert engine.side_model("clean") is not None  # the engine stays usable


def test_overflowing_composition_is_named_and_the_engine_recovers(tiny_experiment, cache_dir):
    # θ_c = 3e38 (finite) and τ_f = −3e38 at one element: θ_c − α·τ_f overflows float32 for α ≥ ~0.14.
    _poke(tiny_experiment.checkpoints.corrupted, UP, (0, 0), 3e38)
    _poke(tiny_experiment.checkpoints.forget, UP, (0, 0), -3e38)
    engine = Engine.load(tiny_experiment, cache_dir=cache_dir)
    engine.set_coefficients(0.1, 0.5)
    with pytest.raises(ValueError, match=rf"composed weights at α=5, β=0 are not finite: tensor {UP} has NaN/Inf "
                                         r"values \(θ_c − α·τ_f \+ β·τ_r overflows float32\)"):
        engine.set_coefficients(5.0, 0.0)
    corrupted = _files(tiny_experiment.checkpoints.corrupted)
    assert (engine.alpha, engine.beta) == (0.0, 0.0)  # reset to θ_c, which is what the model now holds
    for name, t in engine.model.state_dict().items():
        if name in corrupted:
            assert torch.equal(t, corrupted[name]), name
    with pytest.raises(ValueError, match="not finite"):  # the same point again is composed again, not skipped
        engine.set_coefficients(5.0, 0.0)
    assert engine.set_coefficients(0.1, 0.0) > 0  # another point works
    ref = _reference(tiny_experiment, 0.1, 0.0)
    got = engine.model.state_dict()[UP]
    assert torch.isfinite(got).all() and (got.double() - ref[UP]).abs().max() <= 1e-6 * 3.3e38


def test_module_filter_matching_nothing_is_refused(tiny_experiment, cache_dir):
    with pytest.raises(ValueError, match=r"module filter \(include='attn_nope'\) matches none of the model's "
                                         r"\d+ parameters \(e\.g\. model\.embed_tokens\.weight, "):
        Engine.load(tiny_experiment, cache_dir=cache_dir, module_filter=ModuleFilter(include="attn_nope"))
    with pytest.raises(ValueError, match=r"module filter \(layers 40-50\) matches none"):
        Engine.load(tiny_experiment, cache_dir=cache_dir, module_filter=ModuleFilter(layers=(40, 50)))
    with pytest.raises(ValueError, match=r"module filter \(include='mlp', layers 7-9\) matches none"):
        Engine.load(tiny_experiment, cache_dir=cache_dir, module_filter=ModuleFilter(include="mlp", layers=(7, 9)))


def test_devices_are_validated_up_front(tiny_experiment, cache_dir, monkeypatch):
    from msa_core.engine import available_devices, resolve_device

    assert available_devices()[0] == "cpu"
    assert resolve_device("cpu") == torch.device("cpu") and resolve_device(" CPU ".lower()) == torch.device("cpu")
    assert resolve_device(None).type in ("cpu", "cuda")
    with pytest.raises(ValueError, match=r"unknown device 'foo'; available devices: cpu"):
        resolve_device("foo")
    with pytest.raises(ValueError, match=r"device 'cuda:99' is not available on this machine; available devices: cpu"):
        resolve_device("cuda:99")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert available_devices() in (["cpu"], ["cpu", "mps"])
    with pytest.raises(ValueError, match=r"device 'cuda' is not available on this machine; available devices: cpu"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="unknown device 'foo'"):
        Engine.load(tiny_experiment, cache_dir=cache_dir, device="foo")
    assert not (cache_dir / "vectors").exists()  # refused before any work


def test_model_dtypes_are_validated_up_front(tiny_experiment, cache_dir):
    from msa_core.engine import resolve_model_dtype

    assert resolve_model_dtype("bf16") is torch.bfloat16 and resolve_model_dtype("float32") is torch.float32
    assert resolve_model_dtype(None) is None and resolve_model_dtype("auto") is None
    for bad in ("foo", "int8", torch.int8, "Tensor"):
        with pytest.raises(ValueError, match=r"unknown model dtype .*; expected one of float32, bfloat16, float16"):
            resolve_model_dtype(bad)
    with pytest.raises(ValueError, match="unknown model dtype 'int8'"):
        Engine.load(tiny_experiment, cache_dir=cache_dir, dtype="int8")
    assert not (cache_dir / "vectors").exists()
