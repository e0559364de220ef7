"""The one-pass fused recompose kernel, for large models on the CPU and on CUDA devices.

On the CPU, ATen's bf16↔fp32 conversions run at about half the memory bandwidth, so the
eager recompose of a bf16 model (convert θ_c to fp32, two multiply-adds, convert back, all
on cache-resident slices) reaches only ~0.5 of the copy bandwidth (BENCHMARKS.md, figure 1),
and every eager op on a slice costs a dispatch. On a GPU the eager foreach path makes three
passes through an fp32 scratch (copy θ_c, add −α·τ_f, add β·τ_r, cast back): about three
times the bytes of one pass. A ``torch.compile``'d kernel (Inductor: vectorised C++ on the
CPU, a generated Triton kernel on CUDA) does the whole expression, conversions included, in
registers in a single pass: read θ_c, τ_f, τ_r once, write w once.

Kernels come in two families, 'cpu' and 'cuda' (separate functions, so each has its own
compile cache and recompile budget); the coefficients are 0-d fp32 tensors on the tensors'
device and sizes are dynamic, so a new (α, β) never recompiles. A kernel is compiled on first
use (a few seconds, once per process, family and term pattern; the CPU family needs a C++
compiler, the CUDA family Triton). Any failure to compile or run disables that family for
the rest of the process with one warning, and the caller falls back to its eager path, which
rewrites every parameter. θ_c may be in another floating dtype than the model (an fp32
checkpoint in a bf16 model) and the vectors may be bf16: every term is read exactly into
fp32, so the result is still rounded once. The value computed is the same fp32 expression
rounded once to the model dtype, but the compiler may contract or order the multiply-adds
differently: an element can differ from the eager path in its last bits (a unit or two in
the last place of a bf16 model where the terms nearly cancel; fp32 rounding level for an
fp32 model). Set ``MSA_FUSED_COMPOSE=0`` to turn it off (both families).

NOTE: the CUDA family has been tested on the CPU only (the same code compiled for CPU
tensors, the dispatch and the fallback); it has not been measured on a GPU.
"""

from __future__ import annotations

import logging
import os
import threading
import types
from collections.abc import Callable, Sequence
from typing import Optional, Union

import torch

log = logging.getLogger(__name__)

# Kernel families: the device types a compiled kernel exists for.
FAMILIES = ("cpu", "cuda")
_LOCK = threading.Lock()
_KERNELS: dict[tuple[str, bool, bool], Callable[..., None]] = {}  # (family or "cuda:N", use_a, use_b)
_DISABLED: dict[str, str] = {}  # family → why it was disabled in this process


def enabled(family: str = "cpu") -> bool:
    """Whether the fused kernel of ``family`` ('cpu' | 'cuda') may be tried (a known family, not
    turned off by the environment, not failed)."""
    switch = os.environ.get("MSA_FUSED_COMPOSE", "1").strip().lower()
    return family in FAMILIES and family not in _DISABLED and switch not in ("0", "false", "no", "off")


def disabled_reason(family: str = "cpu") -> Optional[str]:
    """Why the kernel of ``family`` was disabled in this process (None when it was not)."""
    return _DISABLED.get(family)


# One top-level function per term pattern: torch.compile caches per code object, so three
# closures over one function would share (and exhaust) a single recompile budget.
# The vectors are cast to fp32 explicitly: a 0-d fp32 coefficient times a bf16 tensor would
# otherwise compute in bf16 (0-d tensors do not promote), and for fp32 vectors it is a no-op.
def _a(
    out: torch.Tensor, base: torch.Tensor, tau_f: torch.Tensor, tau_r: torch.Tensor, ca: torch.Tensor, cb: torch.Tensor
) -> None:
    out.copy_((base.to(torch.float32) + ca * tau_f.to(torch.float32)).to(out.dtype))


def _b(
    out: torch.Tensor, base: torch.Tensor, tau_f: torch.Tensor, tau_r: torch.Tensor, ca: torch.Tensor, cb: torch.Tensor
) -> None:
    out.copy_((base.to(torch.float32) + cb * tau_r.to(torch.float32)).to(out.dtype))


def _ab(
    out: torch.Tensor, base: torch.Tensor, tau_f: torch.Tensor, tau_r: torch.Tensor, ca: torch.Tensor, cb: torch.Tensor
) -> None:
    out.copy_((base.to(torch.float32) + ca * tau_f.to(torch.float32) + cb * tau_r.to(torch.float32)).to(out.dtype))


# The same three for CUDA tensors: their own code objects, so the CUDA kernels neither share
# nor exhaust the CPU kernels' compile cache.
def _a_cuda(
    out: torch.Tensor, base: torch.Tensor, tau_f: torch.Tensor, tau_r: torch.Tensor, ca: torch.Tensor, cb: torch.Tensor
) -> None:
    out.copy_((base.to(torch.float32) + ca * tau_f.to(torch.float32)).to(out.dtype))


def _b_cuda(
    out: torch.Tensor, base: torch.Tensor, tau_f: torch.Tensor, tau_r: torch.Tensor, ca: torch.Tensor, cb: torch.Tensor
) -> None:
    out.copy_((base.to(torch.float32) + cb * tau_r.to(torch.float32)).to(out.dtype))


def _ab_cuda(
    out: torch.Tensor, base: torch.Tensor, tau_f: torch.Tensor, tau_r: torch.Tensor, ca: torch.Tensor, cb: torch.Tensor
) -> None:
    out.copy_((base.to(torch.float32) + ca * tau_f.to(torch.float32) + cb * tau_r.to(torch.float32)).to(out.dtype))


_PATTERNS = {
    ("cpu", True, False): _a, ("cpu", False, True): _b, ("cpu", True, True): _ab,
    ("cuda", True, False): _a_cuda, ("cuda", False, True): _b_cuda, ("cuda", True, True): _ab_cuda,
}
# Tensors smaller than this are done eagerly: negligible bytes, and tiny sizes (0, 1) would
# each cost the compiler a specialised recompile.
_EAGER_BELOW = 4096


def own_code(fn: Callable[..., None], suffix: str) -> Callable[..., None]:
    """A copy of ``fn`` with its own code object (named ``fn.__name__ + suffix``): torch.compile
    keeps its cache and recompile budget per code object."""
    name = fn.__name__ + suffix
    return types.FunctionType(fn.__code__.replace(co_name=name), fn.__globals__, name, fn.__defaults__,
                              fn.__closure__)


def _kernel(use_a: bool, use_b: bool, family: str = "cpu") -> Callable[..., None]:
    # dynamic=True: one kernel serves every tensor size; the coefficients are 0-d tensors so
    # a new (α, β) never recompiles. "cuda:N" (N > 0): the CUDA pattern with a code object of
    # its own, so each GPU of a dispatched model has its own compile cache (the device index is
    # guarded; 8 GPUs sharing one code object would exhaust its recompile budget).
    kind, _, index = family.partition(":")
    fn = _PATTERNS[(kind, use_a, use_b)]
    if index:
        fn = own_code(fn, f"_{index}")
    return torch.compile(fn, dynamic=True, fullgraph=True)


def _eager(p: torch.Tensor, b: torch.Tensor, f: torch.Tensor, r: torch.Tensor, ca: float, cb: float) -> None:
    w = b.to(torch.float32, copy=True)
    if ca != 0.0:
        w.add_(f, alpha=ca)
    if cb != 0.0:
        w.add_(r, alpha=cb)
    p.copy_(w)


Views = list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]


def prepare(
    params: Sequence[torch.Tensor],
    pristine: Sequence[torch.Tensor],
    tau_f: Sequence[torch.Tensor],
    tau_r: Sequence[torch.Tensor],
) -> Optional[Views]:
    """Flat (w, θ_c, τ_f, τ_r) views of every parameter, their sizes marked dynamic, built once
    and reused on every move; None when some tensor is not contiguous, or the tensors are not
    all on one CPU or CUDA device."""
    views: Views = []
    device = params[0].device if params else None
    if device is not None and device.type not in FAMILIES:
        return None
    for ts in zip(params, pristine, tau_f, tau_r):
        if any(t.device != device or not t.is_contiguous() for t in ts):
            return None
        flat = tuple(t.view(-1) for t in ts)
        if flat[0].numel() >= _EAGER_BELOW:
            for t in flat:  # sizes symbolic from the first call: no static compile first
                torch._dynamo.mark_dynamic(t, 0)
        views.append(flat)  # type: ignore[arg-type]
    return views


def compose_fused(views: Views, ca: float, cb: float, *, family: Optional[str] = None) -> bool:
    """w = cast(θ_c + ca·τ_f + cb·τ_r) into every parameter of ``views`` (from :func:`prepare`)
    with the fused kernel of ``family`` (default: the tensors' device type; zero coefficients skip
    their term). Returns False, having possibly written some parameters, when the kernel is
    unavailable or failed (then disabled for the process, with one warning); the caller must
    then run its own path over all of them.
    """
    if not views:
        return False
    device = views[0][0].device
    family = family or device.type
    if not enabled(family):
        return False
    use_a, use_b = ca != 0.0, cb != 0.0
    if not (use_a or use_b):
        return False
    # 0-d tensors on the tensors' device: a new value is data, not a new kernel.
    ta = torch.tensor(ca, dtype=torch.float32, device=device)
    tb = torch.tensor(cb, dtype=torch.float32, device=device)
    # no_grad always: grad mode is part of the compiled kernels' guards, so the warm-up and
    # the engine must call them in the same mode or the first real move recompiles.
    with _LOCK, torch.no_grad():  # compilation is not thread-safe; composes are serial per engine anyway
        try:
            slot = f"{family}:{device.index}" if family == "cuda" and device.index else family
            fn = _KERNELS.get((slot, use_a, use_b))
            if fn is None:
                fn = _KERNELS[(slot, use_a, use_b)] = _kernel(use_a, use_b, slot)
            for p, b, f, r in views:
                if p.numel() < _EAGER_BELOW:
                    _eager(p, b, f, r, ca, cb)
                else:
                    fn(p, b, f, r, ta, tb)
        except Exception as exc:  # noqa: BLE001 - any compiler/runtime failure means: use the eager path
            text = str(exc).strip()
            _DISABLED[family] = f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"
            log.warning("fused %s recompose disabled for this process (%s); using the eager path",
                        family.upper(), _DISABLED[family])
            return False
    return True


def warm_up(
    dtype: torch.dtype,
    base_dtypes: Sequence[torch.dtype] = (),
    *,
    vector_dtype: torch.dtype = torch.float32,
    device: Union[str, torch.device] = "cpu",
    family: Optional[str] = None,
) -> bool:
    """Compile the three term patterns for a model of ``dtype`` on ``device`` now, on small
    tensors, so the first slider moves do not wait for the compiler; once per θ_c dtype in
    ``base_dtypes`` (default: the model's; an fp32 θ_c of a bf16 model is another kernel), with
    vectors of ``vector_dtype``. Returns whether the kernel is usable."""
    n = 2 * _EAGER_BELOW
    dev = torch.device(device)
    for base in tuple(base_dtypes) or (dtype,):
        for shape in ((n,), (2, n // 2)):  # flat views of 1-D and 2-D parameters are guarded apart
            views = prepare(
                [torch.empty(shape, dtype=dtype, device=dev)],
                [torch.zeros(shape, dtype=base, device=dev)],
                [torch.zeros(shape, dtype=vector_dtype, device=dev)],
                [torch.zeros(shape, dtype=vector_dtype, device=dev)],
            )
            for ca, cb in ((1.0, 1.0), (1.0, 0.0), (0.0, 1.0)):
                if views is None or not compose_fused(views, ca, cb, family=family):
                    return False
    return True


def _reset_for_tests() -> None:
    """Forget compiled kernels and a recorded failure (tests only)."""
    with _LOCK:
        _KERNELS.clear()
        _DISABLED.clear()


__all__ = ["FAMILIES", "enabled", "disabled_reason", "prepare", "compose_fused", "warm_up"]
