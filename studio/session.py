"""Per-browser-session state of MSA Studio: every ``st.session_state`` key, and the current point.

Canonical values live under ``msa_*`` keys (below); widgets have their own ``w_*`` keys and
copy into the canonical ones through callbacks, so a value survives page switches even
when the widget showing it is not drawn. Widget-key prefixes, one owner each:

    w_exp_      the sidebar's experiment picker      w_alpha_/w_beta_  coefficient inputs
    w_preset_   the sidebar's presets                w_demo_/w_offer_  demo build buttons
    w_page_exp_ / w_form_  the Experiment page       w_pg_     the Playground page
    w_to_       the Trade-off page                   w_probe_  the Probe page
    w_export_   the Export page                      w_msa_*   mirrors made by widget_mirror()
    w_pin_      the pin row (studio.compare)         w_fine    the fine-slider toggle
    w_guide_    the Guided demo page                 w_layers_ the Layers page
    w_gloss_    the Glossary page                 w_choice_ the θ_clean / e_f / e_r pickers

Every computation at a point runs inside ``engine.session(α, β)`` (through
:func:`msa_core.targets.model_for`), so two sessions never see each other's weights.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import streamlit as st

from msa_core.targets import Point

# Canonical session-state keys.
K_EXP = "msa_exp_path"  # the chosen experiment file (resolved path) or None
K_ALPHA = "msa_alpha"
K_BETA = "msa_beta"
K_DEVICE = "msa_device"  # "auto" | "cpu" | "cuda"
K_DTYPE = "msa_dtype"  # "auto" | a torch dtype name
K_VECTOR_DTYPE = "msa_vector_dtype"  # "float32" | "bfloat16": how τ_f, τ_r are stored
K_PLACEMENT = "msa_placement"  # "one device" | "auto" (accelerate's device_map over every GPU)
K_PENDING_DEMO = "msa_pending_demo"  # None | "quick" | "full": a demo build asked for
K_LOAD_ERROR = "msa_load_error"  # the last loading error, shown by the no-experiment offer
K_ANSWERS = "msa_answers"  # what the Playground showed: {"alpha", "beta", "questions", role: answers}
K_LAST_METRICS = "msa_last_metrics"  # {"alpha", "beta", **EvalResult.to_json()} of the last metrics seen
K_PROBE_SHOWN = "msa_probe_shown"  # what the Probe's cards show: {"questions", "golds", "answers", "p_gold", "tr"}
K_PROBE_RUN = "msa_probe_key"  # the Probe page's last requested run (its inputs), so reruns keep its tables
K_PINNED = "msa_pinned"  # list[Point]: points pinned as extra columns (studio.compare)
K_QUESTIONS = "msa_questions"  # (set name, [indices]): the Playground's question selection (also in the URL)
K_VERDICT = "msa_verdict"  # what the Playground's verdict counted: {"alpha", "beta", "text", "counts", "rows"}
K_METRICS_WAIT = "msa_metrics_wait"  # the last "Compute metrics" wait, with its parts: {"point", "parts"}
K_URL_READ = "msa_url_read"  # True once this session applied its URL (studio.links)
K_URL_WARNINGS = "msa_url_warnings"  # the URL values that could not be used, shown once
K_SWEEP_MSG = "msa_sweep_msg"  # a finished sweep's message, shown once after the rerun
K_SWEEP_RUNNING = "msa_to_sweep_running"  # {"points": n} while a sweep runs; left set when a rerun cut it short
K_GUIDE_STEP = "msa_guide_step"  # the guided demo's current step (0-based index into pages/guided.py's STEPS)
K_THREADS = "msa_threads"  # the sidebar's CPU-thread setting: "auto" or a count (studio.threads_control)
K_PENDING_CHOICE = "msa_pending_choice"  # a msa_core.choices.Choice picked in the sidebar, applied with progress
K_CHOICE_MSG = "msa_choice_msg"  # ("success" | "error", text): the last choice switch, shown once under the pickers
K_AXIS_DEFAULTS = "msa_axis_defaults"  # {picker key: the default it last followed} (follow_default)
K_ENTRY = "_msa_entrypoint_running"  # True while app.py runs the page (see widgets.page_guard)

# Widget keys shared between modules (the coefficient inputs in the sidebar).
W_ALPHA_SLIDER, W_ALPHA_NUM = "w_alpha_slider", "w_alpha_num"
W_BETA_SLIDER, W_BETA_NUM = "w_beta_slider", "w_beta_num"
# The θ_clean candidate and epoch pickers (studio.widgets.choice_controls); the epochs as text ("final", "1", …).
W_CHOICE_CLEAN, W_CHOICE_EF, W_CHOICE_ER = "w_choice_clean", "w_choice_ef", "w_choice_er"
# Fine sliders: a window of ±FINE_HALF_WIDTH around the value in FINE_STEP steps (about 100 steps, as the
# full-range slider has over 0–5, but ten times finer); their own widget keys (fine_key).
W_FINE = "w_fine"
FINE_HALF_WIDTH = 0.5
FINE_STEP = 0.01
# The Playground reads these inputs before drawing them (they sit below the answers).
W_PG_MAX_NEW = "w_pg_max_new"
W_PG_VERDICT_N = "w_pg_verdict_n"
W_PG_SUBSET = "w_pg_subset"


def demo_quick_default() -> bool:
    """True when ``MSA_DEMO_QUICK=1`` asks for the quick demo (tests and CI use it)."""
    return os.environ.get("MSA_DEMO_QUICK", "").strip().lower() in ("1", "true", "yes", "on")


def init_session() -> None:
    """Put every per-session default in place (idempotent; call once per script run)."""
    ss = st.session_state
    for key, value in ((K_EXP, None), (K_ALPHA, 1.0), (K_BETA, 1.0), (K_DEVICE, "auto"), (K_DTYPE, "auto"),
                       (K_VECTOR_DTYPE, "float32"), (K_PLACEMENT, "one device"),
                       (K_PENDING_DEMO, None), (K_LOAD_ERROR, None)):
        ss.setdefault(key, value)


def point() -> Point:
    """The session's current (α, β)."""
    return Point(st.session_state[K_ALPHA], st.session_state[K_BETA])


def fine_key(slider_key: str) -> str:
    """The widget key of a slider's fine-mode twin."""
    return slider_key + "_fine"


def fine_window(value: float, rng: tuple[float, float]) -> tuple[float, float]:
    """The fine slider's (min, max): ±FINE_HALF_WIDTH around ``value``, kept inside ``rng``."""
    lo = max(float(rng[0]), round(value - FINE_HALF_WIDTH, 6))
    hi = min(float(rng[1]), round(value + FINE_HALF_WIDTH, 6))
    return (lo, hi) if hi > lo else (lo, lo + FINE_STEP)  # a one-value range: the slider needs min < max


def set_point(alpha: float, beta: float) -> None:
    """Set (α, β) and every widget showing them (call before the widgets render, e.g. in on_click)."""
    ss = st.session_state
    ss[K_ALPHA], ss[K_BETA] = float(alpha), float(beta)
    ss[W_ALPHA_SLIDER] = ss[W_ALPHA_NUM] = ss[fine_key(W_ALPHA_SLIDER)] = float(alpha)
    ss[W_BETA_SLIDER] = ss[W_BETA_NUM] = ss[fine_key(W_BETA_SLIDER)] = float(beta)


def sync_from_widget(which: str, widget_key: str) -> None:
    """on_change callback: copy a slider / number input value ('alpha' or 'beta') into the canonical state."""
    ss = st.session_state
    value = float(ss[widget_key])
    if which == "alpha":
        set_point(value, ss[K_BETA])
    else:
        set_point(ss[K_ALPHA], value)


def clamp_point(alpha_range: tuple[float, float], beta_range: tuple[float, float]) -> None:
    """Bring the session's (α, β) inside an experiment's ranges (after switching experiments)."""
    p = point()
    a2 = min(max(p.alpha, alpha_range[0]), alpha_range[1])
    b2 = min(max(p.beta, beta_range[0]), beta_range[1])
    if (a2, b2) != (p.alpha, p.beta) or W_ALPHA_SLIDER not in st.session_state:
        set_point(a2, b2)


def set_experiment_path(path: Optional[str]) -> Optional[str]:
    """Make ``path`` the session's experiment (None: no experiment); returns the resolved path."""
    resolved = str(Path(path).expanduser().resolve()) if path else None
    st.session_state[K_EXP] = resolved
    st.session_state[K_LOAD_ERROR] = None
    return resolved


def experiment_path() -> Optional[str]:
    """The session's chosen experiment file, or None."""
    return st.session_state.get(K_EXP)


def load_options() -> tuple[str, str]:
    """The (device, dtype) the session asked for ('auto' = the engine's choice)."""
    return str(st.session_state[K_DEVICE]), str(st.session_state[K_DTYPE])


def placement_options() -> tuple[str, str]:
    """The (vector dtype, placement) the session asked for: 'float32' | 'bfloat16', and
    'one device' | 'auto' (the model spread over every GPU by accelerate's device_map)."""
    return str(st.session_state[K_VECTOR_DTYPE]), str(st.session_state[K_PLACEMENT])


def follow_default(key: str, want: str, choices: Sequence[str]) -> None:
    """Keep the picker ``key`` on the page's default ``want`` while the user has not chosen another
    value: the default changes as data arrives, and a value picked before that (e.g. another
    method's metric) could hide every point. The default last followed is kept per picker
    (:data:`K_AXIS_DEFAULTS`), so a user's own pick is never overwritten."""
    followed = st.session_state.setdefault(K_AXIS_DEFAULTS, {})
    current = st.session_state.get(key)
    if current is None or current not in choices or current == followed.get(key):
        st.session_state[key] = want
    followed[key] = want


def widget_key(key: str) -> str:
    """The widget key that mirrors the canonical value ``key`` (see :func:`widget_mirror`)."""
    return "w_" + key


def widget_mirror(key: str) -> str:
    """The key of a page widget mirroring the canonical value ``key`` (kept across pages)."""
    wkey = widget_key(key)
    if wkey not in st.session_state:
        st.session_state[wkey] = st.session_state[key]
    return wkey


def copy_widget(wkey: str, key: str) -> None:
    """on_change callback: copy a mirrored widget's value to its canonical key."""
    st.session_state[key] = st.session_state[wkey]


def get(key: str, default: Any = None) -> Any:
    """A session value by its K_* key (``default`` when unset)."""
    return st.session_state.get(key, default)


def put(key: str, value: Any) -> None:
    """Set a session value by its K_* key."""
    st.session_state[key] = value


def pop(key: str) -> Any:
    """Remove and return a session value (None when unset)."""
    return st.session_state.pop(key, None)


# URL query parameters of the θ_clean / epoch choice (for studio.links): θ_clean label, e_f, e_r.
CHOICE_PARAMS = ("clean", "ef", "er")


def choice_params(choice: Any) -> dict[str, str]:
    """The URL query values of a :class:`msa_core.choices.Choice` ({} for the default choice)."""
    if choice is None or choice.is_default:
        return {}
    out = {"clean": str(choice.clean)}
    for name, epoch in (("ef", choice.forget_epoch), ("er", choice.retain_epoch)):
        if epoch is not None:
            out[name] = str(epoch)
    return out


def request_choice_from_params(params: dict[str, str]) -> None:
    """Ask for the choice named by URL query values (see :func:`choice_params`); it is applied, with a
    progress bar, once the engine is loaded (studio.widgets.apply_pending_choice). No choice
    parameter: nothing. ValueError naming the parameter when a value is not a label or an epoch."""
    from msa_core.choices import Choice

    if not any(params.get(k) for k in CHOICE_PARAMS):
        return
    epochs = []
    for name in ("ef", "er"):
        raw = str(params.get(name) or "final").strip()
        if raw != "final" and not raw.isdigit():
            raise ValueError(f"URL parameter {name}={raw!r:.40}: expected 'final' or an epoch number")
        epochs.append(None if raw == "final" else int(raw))
    put(K_PENDING_CHOICE, Choice(str(params.get("clean") or "default"), epochs[0], epochs[1]))
