"""Engine placement (issue #12): bf16 vector storage, vectors kept only on their parameter's
device, accelerate device maps (split over "cpu" placements here), the per-device compose
groups with the CUDA dispatch and its fallback (exercised on CPU tensors by monkeypatching the
device kind: nothing here ran on a GPU), and the CLI's placement options."""

from __future__ import annotations

import gc
import json
import logging
import weakref
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import msa_core.recompose as R
from msa_core import fused
from msa_core.cli.models import parse_device_map, parse_max_memory
from msa_core.engine import (
    Engine,
    ModuleFilter,
    parse_size,
    resolve_device_map,
    resolve_max_memory,
    resolve_vector_dtype,
)
from msa_core.generation import generate_answers
from msa_core.recompose import RecomposePlan, whole_tensor_reference
from msa_core.vectors import compute_vectors

POINTS = [(0.0, 0.0), (1.0, 0.5), (2.5, 0.0), (0.3, 4.0)]
QUESTIONS = ["Who wrote the book?", "Where was the author born?"]


def _files(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def _layer_map(engine: Engine) -> dict[str, str]:
    """An explicit module → 'cpu' map, one entry per layer (what a 2-GPU split would name)."""
    layers = len(engine.model.model.layers)
    out = {"model.embed_tokens": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
    out.update({f"model.layers.{i}": "cpu" for i in range(layers)})
    return out


# ----------------------------------------------------------------------------- device maps

def test_explicit_device_map_composes_the_same_weights_and_tokens(tiny_experiment, cache_dir):
    single = Engine.load(tiny_experiment, cache_dir=cache_dir)
    mapped = Engine.load(tiny_experiment, cache_dir=cache_dir, device_map=_layer_map(single))
    assert mapped.device_map == _layer_map(single)
    assert mapped.model_settings == single.model_settings  # placement on one device type: same keys
    for alpha, beta in POINTS:
        single.set_coefficients(alpha, beta)
        mapped.set_coefficients(alpha, beta)
        a, b = single.model.state_dict(), mapped.model.state_dict()
        assert a.keys() == b.keys()
        for name in a:
            assert torch.equal(a[name], b[name]), (alpha, beta, name)
    want = generate_answers(single.model, single.tokenizer, QUESTIONS, max_new_tokens=6)
    got = generate_answers(mapped.model, mapped.tokenizer, QUESTIONS, max_new_tokens=6)
    assert got == want


def test_auto_device_map_with_max_memory_loads_and_composes(tiny_experiment, cache_dir):
    single = Engine.load(tiny_experiment, cache_dir=cache_dir)
    auto = Engine.load(tiny_experiment, cache_dir=cache_dir, device_map="auto", max_memory={"cpu": "2GiB"})
    assert auto.max_memory == {"cpu": 2 * 2**30}
    single.set_coefficients(1.5, 0.5)
    auto.set_coefficients(1.5, 0.5)
    for (n, p), (_m, q) in zip(single.model.named_parameters(), auto.model.named_parameters()):
        assert torch.equal(p, q), n


def test_device_map_that_offloads_is_refused_naming_the_modules(tiny_experiment, cache_dir):
    with pytest.raises(ValueError, match=r"model\.layers\.1.*disk/meta"):
        Engine.load(tiny_experiment, cache_dir=cache_dir,
                    device_map={"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
                                "model.norm": "cpu", "lm_head": "cpu"})
    # 'auto' squeezed into a few bytes: accelerate offloads to disk; refused after loading, by name
    with pytest.raises(ValueError, match=r"off the devices \(disk offload or meta\): \(whole model\)"):
        Engine.load(tiny_experiment, cache_dir=cache_dir, device_map="auto", max_memory={"cpu": 1000})


def test_device_and_device_map_together_are_refused(tiny_experiment, cache_dir):
    with pytest.raises(ValueError, match="not both"):
        Engine.load(tiny_experiment, cache_dir=cache_dir, device="cpu", device_map="auto")


def test_resolve_device_map_checks_devices_before_loading():
    assert resolve_device_map(None) is None
    assert resolve_device_map(" Auto ") == "auto"
    assert resolve_device_map("cpu") == {"": "cpu"}
    assert resolve_device_map({"model": "cpu", "lm_head": "cpu"}) == {"model": "cpu", "lm_head": "cpu"}
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"'lm_head'.*cuda:3.*not available"):
            resolve_device_map({"model": "cpu", "lm_head": "cuda:3"})
        with pytest.raises(ValueError, match="cuda:1"):
            resolve_device_map({"model": 1})
    with pytest.raises(ValueError, match="whole model"):
        resolve_device_map("disk")
    with pytest.raises(ValueError, match="module name"):
        resolve_device_map({3: "cpu"})
    with pytest.raises(ValueError, match="non-empty"):
        resolve_device_map({})


def test_map_mixing_gpus_and_cpu_is_refused_before_loading(monkeypatch):
    import msa_core.engine as E

    monkeypatch.setattr(E, "available_devices", lambda: ["cpu", "cuda", "cuda:0", "cuda:1"])  # names only
    assert resolve_device_map({"model": 0, "lm_head": "cuda:1"}) == {"model": 0, "lm_head": "cuda:1"}
    with pytest.raises(ValueError, match=r"mixes CUDA devices with 'cpu' for lm_head.*offloads"):
        resolve_device_map({"model": "cuda:0", "lm_head": "cpu"})


def test_max_memory_and_sizes_are_parsed_to_bytes():
    assert parse_size("70GiB") == 70 * 2**30
    assert parse_size("1.5 gb") == 1_500_000_000
    assert parse_size("512") == 512 and parse_size(7) == 7
    assert resolve_max_memory({"cuda:1": "1KiB", "cuda": 5, "cpu": "2MB"}) == {1: 1024, 0: 5, "cpu": 2_000_000}
    with pytest.raises(ValueError, match=r"max_memory\['cpu'\].*'70 parsecs'"):
        resolve_max_memory({"cpu": "70 parsecs"})
    with pytest.raises(ValueError, match="max_memory key 'gpu0'"):
        resolve_max_memory({"gpu0": "1GiB"})


# ----------------------------------------------------------------------------- bf16 vectors

def test_bf16_vectors_compose_in_fp32_from_the_rounded_vectors(tiny_experiment, cache_dir):
    engine = Engine.load(tiny_experiment, cache_dir=cache_dir, vector_dtype="bfloat16")
    assert {t.dtype for t in (*engine.plan.tau_f, *engine.plan.tau_r)} == {torch.bfloat16}
    c, f, r, z = (_files(getattr(tiny_experiment.checkpoints, k)) for k in ("corrupted", "forget", "retain", "clean"))
    fp32 = Engine.load(tiny_experiment, cache_dir=cache_dir)
    for alpha, beta in POINTS[1:]:
        engine.set_coefficients(alpha, beta)
        fp32.set_coefficients(alpha, beta)
        got = engine.model.state_dict()
        full = fp32.model.state_dict()
        for n in c:
            # independent oracle: the vectors rounded to bf16, the rest in float64
            tf = (f[n].float() - z[n].float()).to(torch.bfloat16).double()
            tr = (r[n].float() - z[n].float()).to(torch.bfloat16).double()
            want = c[n].double() - alpha * tf + beta * tr
            scale = 1 + abs(alpha) + abs(beta)
            tol = 4 * torch.finfo(torch.float32).eps * max(1.0, want.abs().max().item()) * scale
            assert (got[n].double() - want).abs().max().item() <= tol, (alpha, beta, n)
            # and the storage error against fp32 vectors is within bf16's half-ulp of each term
            bound = (abs(alpha) * (f[n] - z[n]).abs() + abs(beta) * (r[n] - z[n]).abs()) * 2**-8
            assert ((got[n] - full[n]).abs() <= bound + tol).all(), (alpha, beta, n)


def test_vector_dtype_is_part_of_the_model_settings_only_when_not_fp32(tiny_experiment, cache_dir):
    fp32 = Engine.load(tiny_experiment, cache_dir=cache_dir)
    bf16 = Engine.load(tiny_experiment, cache_dir=cache_dir, vector_dtype="bf16")
    assert fp32.model_settings == {"dtype": "float32", "device": "cpu", "module_filter": None}  # keys as before
    assert bf16.model_settings == {**fp32.model_settings, "vector_dtype": "bfloat16"}
    assert resolve_vector_dtype(None) == torch.float32
    with pytest.raises(ValueError, match="unknown vector dtype 'float16'"):
        resolve_vector_dtype("float16")


def test_memory_report_counts_bf16_vectors_at_two_bytes(tiny_experiment, cache_dir):
    engine = Engine.load(tiny_experiment, cache_dir=cache_dir, vector_dtype="bfloat16")
    n = sum(p.numel() for p in engine.plan.params)
    assert engine.memory_bytes()["vectors"] == 2 * 2 * n
    assert engine.plan.bytes_per_move == (4 + 4 + 2 + 2) * n  # fp32 w and θ_c, bf16 τ_f and τ_r
    per_device = engine.memory_by_device()
    assert list(per_device) == ["cpu"] and per_device["cpu"]["vectors"] == 4 * n


# ----------------------------------------------------------------------------- vectors only where used

def test_engine_keeps_only_the_placed_vectors(tiny_experiment, cache_dir):
    vs = compute_vectors(tiny_experiment, cache_dir)
    before = {k: v.clone() for k, v in vs.forget.items()}
    probe = weakref.ref(next(iter(vs.forget.values())))
    engine = Engine.load(tiny_experiment, cache_dir=cache_dir, vector_dtype="bfloat16",
                         module_filter=ModuleFilter(include="mlp"))
    ev = engine.vectors
    assert (ev.fingerprint, ev.path, ev.norms) == (vs.fingerprint, vs.path, vs.norms)
    assert set(ev.forget) == set(ev.retain) == set(engine.param_names)  # untied model: vector name = parameter
    assert all("mlp" in k for k in ev.forget)
    for k, t in ev.forget.items():
        assert t.dtype == torch.bfloat16 and torch.equal(t, before[k].to(torch.bfloat16))
    # the dicts are the plan's own tensors, not copies
    assert [t.data_ptr() for t in engine.plan.tau_f] == [ev.forget[n].data_ptr() for n in engine.param_names]
    del vs
    gc.collect()
    assert probe() is None, "the engine still references the CPU fp32 vector tensors"


def test_swap_vectors_places_the_new_vectors_too(tiny_experiment, cache_dir):
    engine = Engine.load(tiny_experiment, cache_dir=cache_dir, vector_dtype="bfloat16")
    engine.set_coefficients(1.0, 1.0)
    engine.swap_vectors(tiny_experiment, compute_vectors(tiny_experiment, cache_dir))
    assert (engine.alpha, engine.beta) == (0.0, 0.0)
    assert {t.dtype for t in engine.vectors.forget.values()} == {torch.bfloat16}
    placed = [engine.vectors.retain[n].data_ptr() for n in engine.param_names]
    assert [t.data_ptr() for t in engine.plan.tau_r] == placed


# ----------------------------------------------------------------------------- per-device groups

def _random_plan(dtype: torch.dtype, n_tensors: int = 6, seed: int = 0) -> tuple[list[torch.Tensor], ...]:
    gen = torch.Generator().manual_seed(seed)
    shapes = [(64, 80), (80,), (128, 64), (33,), (64, 64), (7, 9)][:n_tensors]
    pristine = [torch.randn(s, generator=gen).to(dtype) for s in shapes]
    params = [torch.empty(s, dtype=dtype) for s in shapes]
    tau_f = [torch.randn(s, generator=gen) * 0.1 for s in shapes]
    tau_r = [torch.randn(s, generator=gen) * 0.1 for s in shapes]
    return params, pristine, tau_f, tau_r


def _split_groups(monkeypatch, params: list[torch.Tensor]) -> None:
    """Put every other parameter into a fake second device group 'cpu:1'."""
    second = {p.data_ptr() for p in params[1::2]}
    monkeypatch.setattr(R, "_group_key", lambda t: torch.device("cpu", 1 if t.data_ptr() in second else 0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_plan_split_into_device_groups_composes_like_one_group(monkeypatch, dtype):
    params, pristine, tau_f, tau_r = _random_plan(dtype)
    one = RecomposePlan([p.clone() for p in params], pristine, tau_f, tau_r)
    _split_groups(monkeypatch, params)
    split = RecomposePlan(params, pristine, tau_f, tau_r)
    assert [str(d) for d in split.devices] == ["cpu:0", "cpu:1"]
    for alpha, beta in POINTS:
        path = split.compose(alpha, beta)
        assert path == f"{R.PATH_EAGER} on cpu:0 + {R.PATH_EAGER} on cpu:1"
        one.compose(alpha, beta)
        assert all(torch.equal(a, b) for a, b in zip(split.params, one.params)), (alpha, beta)
        # and against an independent float64 oracle
        for p, b, f, r in zip(split.params, pristine, tau_f, tau_r):
            want = (b.double() - alpha * f.double() + beta * r.double()).float().to(dtype)
            assert (p.double() - want.double()).abs().max() <= (want.double().abs().max() * 2**-7 + 1e-6)
    assert set(split.memory_by_device()) == {"cpu:0", "cpu:1"}


def test_plan_refuses_tensors_of_one_parameter_on_different_devices():
    params, pristine, tau_f, tau_r = _random_plan(torch.float32, 2)
    tau_f[1] = torch.empty(tau_f[1].shape, device="meta")
    with pytest.raises(ValueError, match=r"tensor 1: devices differ"):
        RecomposePlan(params, pristine, tau_f, tau_r)


def test_first_non_finite_over_several_device_groups(monkeypatch):
    params, pristine, tau_f, tau_r = _random_plan(torch.float32)
    _split_groups(monkeypatch, params)
    plan = RecomposePlan(params, pristine, tau_f, tau_r)
    plan.compose(1.0, 1.0)
    assert plan.first_non_finite() is None
    params[3][0] = float("inf")
    assert plan.first_non_finite() == 3


# ----------------------------------------------------------------------------- CUDA dispatch (on CPU tensors)

def _as_cuda_group(monkeypatch, params: list[torch.Tensor]) -> None:
    """Second group 'cpu:1' composed as a CUDA group would be (the CUDA kernel family, foreach
    fallback) — the dispatch runs on CPU tensors; no GPU is involved."""
    _split_groups(monkeypatch, params)
    monkeypatch.setattr(R, "device_kind", lambda d: "cuda" if d.index == 1 else d.type)
    monkeypatch.setattr(R, "_FUSED_MIN", 0)


def test_cuda_group_uses_the_cuda_kernel_family_with_device_coefficients(monkeypatch):
    monkeypatch.delenv("MSA_FUSED_COMPOSE", raising=False)
    fused._reset_for_tests()
    calls: list[tuple[str, torch.device, int]] = []

    def fake_kernel(use_a: bool, use_b: bool, family: str = "cpu"):
        def run(out, base, tf, tr, ca, cb):
            calls.append((family, ca.device, ca.dim()))
            w = base.float()
            if use_a:
                w = w + ca * tf.float()
            if use_b:
                w = w + cb * tr.float()
            out.copy_(w.to(out.dtype))
        return run

    monkeypatch.setattr(fused, "_kernel", fake_kernel)
    monkeypatch.setattr(fused, "_EAGER_BELOW", 1)
    params, pristine, tau_f, tau_r = _random_plan(torch.bfloat16)
    _as_cuda_group(monkeypatch, params)
    try:
        plan = RecomposePlan(params, pristine, tau_f, tau_r)
        path = plan.compose(1.5, 0.5)
        assert path == f"{R.PATH_FUSED} on cpu:1 + {R.PATH_FUSED} on cpu:0"  # CUDA groups first
        assert {c[0] for c in calls} == {"cuda", "cpu"}
        assert all(dev.type == "cpu" and dim == 0 for _f, dev, dim in calls)  # 0-d, on the tensors' device
        n_cuda = sum(1 for c in calls if c[0] == "cuda")
        assert n_cuda == len(params[1::2])
        for p, want in zip(plan.params, whole_tensor_reference(plan, 1.5, 0.5)):
            assert torch.equal(p, want)
    finally:
        fused._reset_for_tests()


def test_cuda_group_falls_back_to_foreach_with_one_warning(monkeypatch, caplog):
    monkeypatch.delenv("MSA_FUSED_COMPOSE", raising=False)
    fused._reset_for_tests()
    real = fused._kernel

    def kernel(use_a: bool, use_b: bool, family: str = "cpu"):
        if family == "cuda":
            raise RuntimeError("triton: no GPU to compile for")
        return real(use_a, use_b, family)

    monkeypatch.setattr(fused, "_kernel", kernel)
    monkeypatch.setattr(fused, "enabled", lambda family="cpu": family == "cuda" and family not in fused._DISABLED)
    params, pristine, tau_f, tau_r = _random_plan(torch.bfloat16)
    _as_cuda_group(monkeypatch, params)
    try:
        plan = RecomposePlan(params, pristine, tau_f, tau_r)
        with caplog.at_level(logging.WARNING, logger="msa_core.fused"):
            for alpha, beta in [(1.5, 0.5), (0.5, 2.0), (1.5, 0.5)]:
                path = plan.compose(alpha, beta)
                assert path == f"{R.PATH_DEVICE} on cpu:1 + {R.PATH_EAGER} on cpu:0"
                for p, want in zip(plan.params, whole_tensor_reference(plan, alpha, beta)):
                    assert torch.equal(p, want), (alpha, beta)
        warnings = [r for r in caplog.records if "disabled" in r.getMessage()]
        assert len(warnings) == 1 and "CUDA" in warnings[0].getMessage()
        assert "no GPU to compile for" in (fused.disabled_reason("cuda") or "")
        assert fused.disabled_reason("cpu") is None  # the CPU family is not affected
        assert plan.memory_bytes()["scratch"] > 0  # the foreach fallback allocated its fp32 scratch lazily
    finally:
        fused._reset_for_tests()


def test_cuda_kernel_family_compiles_and_agrees_on_cpu_tensors(monkeypatch):
    """The CUDA family's functions (own code objects) through torch.compile, on CPU tensors
    (Inductor's C++ backend): the same expression, bf16 vectors read exactly into fp32."""
    monkeypatch.delenv("MSA_FUSED_COMPOSE", raising=False)
    fused._reset_for_tests()
    try:
        params, pristine, tau_f, tau_r = _random_plan(torch.bfloat16, 3)
        big = (64, 128)
        gen = torch.Generator().manual_seed(5)
        params.append(torch.empty(big, dtype=torch.bfloat16))
        pristine.append(torch.randn(big, generator=gen).bfloat16())
        tau_f.append((torch.randn(big, generator=gen) * 0.1).bfloat16())
        tau_r.append((torch.randn(big, generator=gen) * 0.1).bfloat16())
        views = fused.prepare(params, pristine, tau_f, tau_r)
        assert views is not None
        if not fused.compose_fused(views, -1.5, 0.5, family="cuda"):
            pytest.skip(f"compiler unavailable here: {fused.disabled_reason('cuda')}")
        assert ("cuda", True, True) in fused._KERNELS
        for p, b, f, r in zip(params, pristine, tau_f, tau_r):
            want = (b.double() - 1.5 * f.double() + 0.5 * r.double()).float().bfloat16()
            ia, ib = p.view(torch.int16).int(), want.view(torch.int16).int()
            assert int((ia - ib).abs().max()) <= 2
    finally:
        fused._reset_for_tests()


def test_each_gpu_gets_kernels_with_a_code_object_of_its_own():
    f = fused.own_code(fused._ab_cuda, "_1")
    assert f.__code__ is not fused._ab_cuda.__code__ and f.__name__ == "_ab_cuda_1"
    out, ref = torch.empty(5), torch.empty(5)
    args = (torch.arange(5.0), torch.ones(5), torch.full((5,), 2.0), torch.tensor(-0.5), torch.tensor(0.25))
    f(out, *args)
    fused._ab_cuda(ref, *args)
    assert torch.equal(out, ref) and torch.equal(out, torch.arange(5.0) - 0.5 + 0.5)


def test_empty_plan_composes_nothing():
    assert RecomposePlan([], [], [], []).compose(1.0, 1.0) == R.PATH_EAGER


# ----------------------------------------------------------------------------- CLI options

def test_cli_device_map_and_max_memory_parsing(tmp_path):
    assert parse_device_map(None) is None and parse_device_map("auto") == "auto"
    assert parse_device_map("cuda:0") == "cuda:0"
    assert parse_device_map('{"model.layers.0": 0, "lm_head": "cpu"}') == {"model.layers.0": 0, "lm_head": "cpu"}
    f = tmp_path / "map.json"
    f.write_text(json.dumps({"model": "cpu", "lm_head": "cpu"}))
    assert parse_device_map(str(f)) == {"model": "cpu", "lm_head": "cpu"}
    with pytest.raises(FileNotFoundError, match="missing.json"):
        parse_device_map(str(tmp_path / "missing.json"))
    with pytest.raises(ValueError, match="--device-map: not valid JSON"):
        parse_device_map("{model: cpu}")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="list.json"):
        parse_device_map(str(tmp_path / "list.json"))
    assert parse_max_memory("cuda:0=70GiB, cpu=100GiB") == {"cuda:0": "70GiB", "cpu": "100GiB"}
    with pytest.raises(ValueError, match="DEVICE=SIZE"):
        parse_max_memory("cuda:0:70GiB")


def test_cli_engine_options_reach_the_engine(tiny_experiment, cache_dir, monkeypatch):
    import argparse

    from msa_core.cli.models import add_engine_args, load_engine

    parser = argparse.ArgumentParser()
    add_engine_args(parser)
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args([str(tiny_experiment.source or "x.yaml"), "--vector-dtype", "bfloat16",
                              "--device-map", "auto", "--max-memory", "cpu=4GiB", "--quiet"])
    monkeypatch.setenv("MSA_CACHE_DIR", str(cache_dir))
    threads = torch.get_num_threads()
    try:
        engine = load_engine(args, tiny_experiment)
    finally:
        torch.set_num_threads(threads)  # load_engine applies the size rule
    assert engine.vector_dtype == torch.bfloat16
    assert engine.device_map == "auto" and engine.max_memory == {"cpu": 4 * 2**30}
    args.device_map = None
    with pytest.raises(ValueError, match="--max-memory needs --device-map"):
        load_engine(args, tiny_experiment)
