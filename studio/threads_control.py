"""The sidebar's CPU-thread setting: shows torch's thread count (and why), lets the user pick one.

Called from :func:`studio.widgets.engine_sidebar_info` on every run, before the page runs,
so the choice is applied before any work of that run. "auto" follows
:mod:`msa_core.threads` (``MSA_THREADS``, else by model size); a number overrides it.
torch's thread count belongs to the thread that sets it (and is inherited by threads started
later): each script run applies the setting in its own thread, before the page's work, so
with several browser sessions each run uses its session's setting.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Union

import streamlit as st

from msa_core.threads import (
    SMALL_MODEL_PARAMS,
    ThreadChoice,
    apply_threads,
    choose_threads,
    current_threads,
    physical_cores,
)
from studio import session

if TYPE_CHECKING:
    from msa_core.engine import Engine

AUTO = "auto"
# The largest count offered in the picker (more is never useful for this app's models).
_MAX_OFFERED = 64
_HELP = ("torch's CPU threads, for every computation of this app (process-wide). **auto**: 1 thread for models "
         f"under {SMALL_MODEL_PARAMS / 1e6:.0f}M parameters — small models gain little from more threads and "
         "slow down several times when another process keeps a core busy — else one per physical core; "
         "`MSA_THREADS` overrides auto. "
         "Measured figures: BENCHMARKS.md, \"Threads\".")


def _options() -> list[Union[str, int]]:
    most = min(_MAX_OFFERED, max(os.cpu_count() or 1, physical_cores()))
    return [AUTO, *range(1, most + 1)]


def current_choice(engine: Engine) -> ThreadChoice:
    """The thread count the session's setting asks for with this engine (not applied)."""
    value = session.get(session.K_THREADS, AUTO)
    explicit = None if value == AUTO else int(value)
    return choose_threads(engine.parameter_count, explicit, explicit_source="sidebar")


def _load_text(threads: int) -> str:
    try:
        load = os.getloadavg()[0]
    except OSError:
        return ""
    cores = os.cpu_count() or 1
    text = f" · machine load {load:.1f} on {cores} CPU{'s' if cores != 1 else ''}"
    return text + (" (busy: 1 thread is usually faster)" if threads > 1 and load >= cores else "")


def threads_sidebar(engine: Engine) -> ThreadChoice:
    """Apply the session's thread setting, then show it: the GPU (on CUDA), the thread count and
    why, the machine load, and the picker. Returns what was applied."""
    if session.get(session.K_THREADS) not in _options():
        session.put(session.K_THREADS, AUTO)
    # Read back, not assumed: torch's count is per thread, and this is the thread the page runs in.
    applied = apply_threads(current_choice(engine))
    choice = ThreadChoice(current_threads(), applied.source)
    if engine.device.type == "cuda":
        import torch

        st.caption(f"GPU: {torch.cuda.get_device_name(engine.device)}")
    st.caption(f"CPU threads: {choice.describe()}{_load_text(choice.threads)}")
    wkey = session.widget_mirror(session.K_THREADS)
    st.selectbox("CPU threads", _options(), key=wkey, on_change=session.copy_widget, args=(wkey, session.K_THREADS),
                 format_func=lambda v: "auto (by model size)" if v == AUTO else str(v), help=_HELP)
    return choice
