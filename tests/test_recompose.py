"""The recompose plan: the sliced, threaded CPU path against whole-tensor arithmetic, the
device-style grouped path, the plan's public read-only API, and state born in constructors."""

from __future__ import annotations

import pytest
import torch

import msa_core.recompose as R
from msa_core.engine import Engine, ModuleFilter
from msa_core.recompose import (
    RecomposePlan,
    WorkItem,
    compose_items,
    grouped_items,
    sliced_items,
    whole_tensor_reference,
)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("fixture", ["tiny_experiment", "tiny_experiment_bf16"])
def test_sliced_threaded_cpu_path_equals_whole_tensor_arithmetic(request, cache_dir, monkeypatch, fixture, threads):
    """Force tiny slices, several items and worker threads: bit-identical to whole tensors."""
    exp = request.getfixturevalue(fixture)
    monkeypatch.setenv("MSA_FUSED_COMPOSE", "0")  # the eager path itself (the fused kernel is in test_fused.py)
    monkeypatch.setattr(R, "CPU_STEP_ELEMENTS", 97)  # odd sizes: slices straddle tensor ends
    monkeypatch.setattr(R, "_CPU_SERIAL_STEP", 113)
    monkeypatch.setattr(R, "_CPU_ITEM_SLICES", 3)
    monkeypatch.setattr(R, "_CPU_THREADED_MIN", 0)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        engine = Engine.load(exp, cache_dir=cache_dir)
        for alpha, beta in [(1.5, 0.0), (0.0, 2.0), (2.5, 0.75), (0.0, 0.0)]:
            engine.set_coefficients(alpha, beta)
            assert engine.compose_path == R.PATH_EAGER
            for i, (p, want) in enumerate(zip(engine.plan.params, whole_tensor_reference(engine.plan, alpha, beta))):
                assert torch.equal(p, want), (fixture, threads, alpha, beta, i)
    finally:
        torch.set_num_threads(old)


def test_thread_count_changes_between_composes_rebuild_the_work_items(tiny_experiment_bf16, cache_dir, monkeypatch):
    """The items and scratch follow torch's thread count from one compose to the next."""
    monkeypatch.setenv("MSA_FUSED_COMPOSE", "0")
    monkeypatch.setattr(R, "CPU_STEP_ELEMENTS", 97)
    monkeypatch.setattr(R, "_CPU_SERIAL_STEP", 113)
    monkeypatch.setattr(R, "_CPU_THREADED_MIN", 0)
    old = torch.get_num_threads()
    engine = Engine.load(tiny_experiment_bf16, cache_dir=cache_dir)
    try:
        for threads, (alpha, beta) in [(1, (1.0, 0.5)), (2, (2.0, 0.25)), (1, (0.5, 3.0)), (2, (1.0, 0.5))]:
            torch.set_num_threads(threads)
            engine.set_coefficients(alpha, beta)
            for p, want in zip(engine.plan.params, whole_tensor_reference(engine.plan, alpha, beta)):
                assert torch.equal(p, want), (threads, alpha, beta)
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_grouped_items_with_scratch_equal_whole_tensor_arithmetic(dtype):
    """The device path's sequence (groups of whole tensors through an fp32 scratch), run on
    CPU tensors: the same bits as whole-tensor arithmetic, non-contiguous tensors included."""
    gen = torch.Generator().manual_seed(0)
    shapes = [(7, 5), (64,), (3, 11), (1,), (0,)]
    pristine = [torch.randn(s, generator=gen).to(dtype) for s in shapes]
    pristine.append(torch.randn(6, 4, generator=gen).to(dtype).t())  # strided
    params = [torch.empty_like(t) for t in pristine]
    tau_f = [torch.randn(t.shape, generator=gen) for t in pristine]
    tau_r = [torch.randn(t.shape, generator=gen) for t in pristine]
    plan = RecomposePlan(params, pristine, tau_f, tau_r)
    items = grouped_items((params, pristine, tau_f, tau_r), limit=40)
    assert [len(it.params) for it in items] and sum(len(it.params) for it in items) == len(params)
    scratch = None if dtype == torch.float32 else torch.empty(max(it.elements for it in items))
    for alpha, beta in [(1.5, 0.0), (0.0, 2.0), (2.5, 0.75), (0.0, 0.0)]:
        compose_items(items, -alpha, beta, scratch)
        for i, (p, want) in enumerate(zip(params, whole_tensor_reference(plan, alpha, beta))):
            assert torch.equal(p, want), (dtype, alpha, beta, i)


def test_plan_exposes_its_tensors_and_sizes(tiny_experiment, cache_dir):
    engine = Engine.load(tiny_experiment, cache_dir=cache_dir)
    plan = engine.plan
    named = dict(engine.model.named_parameters())
    assert plan.tensor_count == len(engine.param_names) == len(named)
    assert all(p.data_ptr() == named[n].data_ptr() for p, n in zip(plan.params, engine.param_names))
    assert plan.elements == engine.parameter_count
    assert plan.bytes_per_move == plan.elements * (2 * 4 + 8)  # fp32: read θ_c, τ_f, τ_r, write w
    assert all(t.dtype == torch.float32 for t in plan.tau_f + plan.tau_r)
    filtered = Engine.load(tiny_experiment, cache_dir=cache_dir, module_filter=ModuleFilter(include=r"mlp"))
    assert 0 < filtered.plan.tensor_count < plan.tensor_count
    assert all("mlp" in n for n in filtered.param_names)


def test_plan_rejects_lists_that_do_not_line_up():
    a = [torch.zeros(3)]
    with pytest.raises(ValueError, match="parallel lists"):
        RecomposePlan(a, a, a, [])
    with pytest.raises(ValueError, match="tensor 0: shapes differ"):
        RecomposePlan(a, a, a, [torch.zeros(4)])


def test_engine_and_plan_state_is_born_in_their_constructors(tiny_experiment_bf16, cache_dir, monkeypatch):
    """Composing (every path, several thread counts) adds no attribute to the engine or its plan."""
    monkeypatch.setenv("MSA_FUSED_COMPOSE", "0")
    monkeypatch.setattr(R, "_CPU_THREADED_MIN", 0)
    engine = Engine.load(tiny_experiment_bf16, cache_dir=cache_dir)
    before = (set(vars(engine)), set(vars(engine.plan)))
    old = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            engine.set_coefficients(1.0 + threads, 0.5)
    finally:
        torch.set_num_threads(old)
    assert (set(vars(engine)), set(vars(engine.plan))) == before
    assert engine.memory_bytes()["scratch"] > 0  # the bf16 model's fp32 work space is reported


def test_work_item_counts_its_elements():
    item = WorkItem([torch.zeros(3, 4), torch.zeros(5)], [], [], [])
    assert item.elements == 17


def test_sliced_items_cover_every_element_once_within_the_item_size():
    ts = [torch.zeros(10, 7), torch.zeros(5), torch.zeros(4, 6).t(), torch.zeros(33)]
    items = sliced_items((ts, ts, ts, ts), step=8, per_item=2)
    assert all(it.elements <= 16 for it in items if len(it.params) > 1 or it.params[0].is_contiguous())
    strided = [it for it in items if not it.params[0].is_contiguous()]
    assert len(strided) == 1 and strided[0].params[0] is ts[2]  # a strided tensor is its own item
    assert sum(it.elements for it in items) == sum(t.numel() for t in ts)
    assert all(s.numel() <= 8 for it in items for s in it.params if s.is_contiguous())


def test_first_non_finite_names_the_first_bad_tensor_and_ignores_overflowing_sums():
    from msa_core.recompose import first_non_finite

    ts = [torch.zeros(3, 4), torch.ones(5), torch.ones(2, 2), torch.ones(3)]
    assert first_non_finite(ts) is None and first_non_finite([]) is None
    ts[2][1, 1] = float("nan")
    ts[3][0] = float("-inf")
    assert first_non_finite(ts) == 2
    # finite values whose sum overflows float32 are not reported
    assert first_non_finite([torch.full((4,), 3e38), torch.full((2,), 3e38, dtype=torch.bfloat16)]) is None
    assert first_non_finite([torch.ones(2, dtype=torch.bfloat16), torch.tensor([1.0, float("inf")]).bfloat16()]) == 1
    big = torch.ones(3, 40000)  # summed in slices on the CPU: the NaN sits in the last one
    big[2, -1] = float("nan")
    assert first_non_finite([torch.ones(70000), big, big]) == 1
