"""An optional fused recompose kernel for large models on the CPU.

On the CPU, ATen's bf16↔fp32 conversions run at about half the memory bandwidth, so the
eager recompose of a bf16 model (convert θ_c to fp32, two multiply-adds, convert back, all
on cache-resident slices) reaches only ~0.5 of the copy bandwidth (BENCHMARKS.md, figure 1),
and every eager op on a slice costs a dispatch. A ``torch.compile``'d kernel (Inductor's
vectorised C++) does the whole expression, conversions included, in registers in a single
pass: read θ_c, τ_f, τ_r once, write w once.

It is compiled on first use (a few seconds, once per process and term pattern; it needs a
C++ compiler). Any failure to compile or run disables it for the rest of the process with
one warning, and the caller falls back to the eager path, which rewrites every parameter.
θ_c may be in another floating dtype than the model (an fp32 checkpoint in a bf16 model): it
is read exactly into fp32 like the other terms, so the result is still rounded once.
The value computed is the same fp32 expression rounded once to the model dtype, but the
compiler may contract or order the multiply-adds differently: an element can differ from
the eager path in its last bits (a unit or two in the last place of a bf16 model where the
terms nearly cancel; fp32 rounding level for an fp32 model). Set ``MSA_FUSED_COMPOSE=0``
to turn it off.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from typing import Optional

import torch

log = logging.getLogger(__name__)

_LOCK = threading.Lock()
_KERNELS: dict[tuple[bool, bool], Callable[..., None]] = {}
_DISABLED: Optional[str] = None


def enabled() -> bool:
    """Whether the fused kernel may be tried (not turned off by the environment, not failed)."""
    switch = os.environ.get("MSA_FUSED_COMPOSE", "1").strip().lower()
    return _DISABLED is None and switch not in ("0", "false", "no", "off")


def disabled_reason() -> Optional[str]:
    """Why the kernel was disabled in this process (None when it was not)."""
    return _DISABLED


# One top-level function per term pattern: torch.compile caches per code object, so three
# closures over one function would share (and exhaust) a single recompile budget.
def _a(
    out: torch.Tensor, base: torch.Tensor, tau_f: torch.Tensor, tau_r: torch.Tensor, ca: torch.Tensor, cb: torch.Tensor
) -> None:
    out.copy_((base.to(torch.float32) + ca * tau_f).to(out.dtype))


def _b(
    out: torch.Tensor, base: torch.Tensor, tau_f: torch.Tensor, tau_r: torch.Tensor, ca: torch.Tensor, cb: torch.Tensor
) -> None:
    out.copy_((base.to(torch.float32) + cb * tau_r).to(out.dtype))


def _ab(
    out: torch.Tensor, base: torch.Tensor, tau_f: torch.Tensor, tau_r: torch.Tensor, ca: torch.Tensor, cb: torch.Tensor
) -> None:
    out.copy_((base.to(torch.float32) + ca * tau_f + cb * tau_r).to(out.dtype))


_PATTERNS = {(True, False): _a, (False, True): _b, (True, True): _ab}
# Tensors smaller than this are done eagerly: negligible bytes, and tiny sizes (0, 1) would
# each cost the compiler a specialised recompile.
_EAGER_BELOW = 4096


def _kernel(use_a: bool, use_b: bool) -> Callable[..., None]:
    # dynamic=True: one kernel serves every tensor size; the coefficients are 0-d tensors so
    # a new (α, β) never recompiles.
    return torch.compile(_PATTERNS[(use_a, use_b)], dynamic=True, fullgraph=True)


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
    and reused on every move; None when some tensor is not a contiguous CPU tensor."""
    views: Views = []
    for ts in zip(params, pristine, tau_f, tau_r):
        if any(t.device.type != "cpu" or not t.is_contiguous() for t in ts):
            return None
        flat = tuple(t.view(-1) for t in ts)
        if flat[0].numel() >= _EAGER_BELOW:
            for t in flat:  # sizes symbolic from the first call: no static compile first
                torch._dynamo.mark_dynamic(t, 0)
        views.append(flat)  # type: ignore[arg-type]
    return views


def compose_fused(views: Views, ca: float, cb: float) -> bool:
    """w = cast(θ_c + ca·τ_f + cb·τ_r) into every parameter of ``views`` (from :func:`prepare`)
    with the fused kernel (zero coefficients skip their term). Returns False, having possibly
    written some parameters, when the kernel is unavailable; the caller must then run its own
    path over all of them.
    """
    global _DISABLED
    if not enabled() or not views:
        return False
    use_a, use_b = ca != 0.0, cb != 0.0
    if not (use_a or use_b):
        return False
    ta = torch.tensor(ca, dtype=torch.float32)
    tb = torch.tensor(cb, dtype=torch.float32)
    # no_grad always: grad mode is part of the compiled kernels' guards, so the warm-up and
    # the engine must call them in the same mode or the first real move recompiles.
    with _LOCK, torch.no_grad():  # compilation is not thread-safe; composes are serial per engine anyway
        try:
            fn = _KERNELS.get((use_a, use_b))
            if fn is None:
                fn = _KERNELS[(use_a, use_b)] = _kernel(use_a, use_b)
            for p, b, f, r in views:
                if p.numel() < _EAGER_BELOW:
                    _eager(p, b, f, r, ca, cb)
                else:
                    fn(p, b, f, r, ta, tb)
        except Exception as exc:  # noqa: BLE001 - any compiler/runtime failure means: use the eager path
            _DISABLED = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            log.warning("fused CPU recompose disabled for this process (%s); using the eager path", _DISABLED)
            return False
    return True


def warm_up(dtype: torch.dtype, base_dtypes: Sequence[torch.dtype] = ()) -> bool:
    """Compile the three term patterns for a model of ``dtype`` now, on small tensors, so the
    first slider moves do not wait for the compiler; once per θ_c dtype in ``base_dtypes``
    (default: the model's; an fp32 θ_c of a bf16 model is another kernel). Returns whether the
    kernel is usable."""
    n = 2 * _EAGER_BELOW
    for base in tuple(base_dtypes) or (dtype,):
        for shape in ((n,), (2, n // 2)):  # flat views of 1-D and 2-D parameters are guarded apart
            views = prepare(
                [torch.empty(shape, dtype=dtype)],
                [torch.zeros(shape, dtype=base)],
                [torch.zeros(shape)],
                [torch.zeros(shape)],
            )
            for ca, cb in ((1.0, 1.0), (1.0, 0.0), (0.0, 1.0)):
                if views is None or not compose_fused(views, ca, cb):
                    return False
    return True


def _reset_for_tests() -> None:
    """Forget compiled kernels and a recorded failure (tests only)."""
    global _DISABLED
    with _LOCK:
        _KERNELS.clear()
        _DISABLED = None


__all__ = ["enabled", "disabled_reason", "prepare", "compose_fused", "warm_up"]
