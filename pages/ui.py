"""Drawing helpers shared by the entrypoint and the pages (no caches: those live in state.py).

Not a page (``st.navigation`` does not list it). Holds the readable-error helper, the
first-start "build the demo" offer, the engine loading with a live progress bar, the
sidebar engine panel and metric labels that say which direction is better.
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any, Callable, Optional

import pandas as pd
import streamlit as st

from pages import state

log = logging.getLogger("msa.app")

# What the core raises for bad inputs (see DESIGN §7); torch raises RuntimeError
# (e.g. out of memory, shape mismatch) when a checkpoint is not what it claims to be.
CORE_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, KeyError, OSError, RuntimeError)


def error_text(exc: BaseException) -> str:
    """The message of an exception as a person should read it (KeyError unquoted)."""
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])
    return str(exc) or type(exc).__name__


def show_error(title: str, exc: BaseException, where: Any = None) -> None:
    """A readable st.error naming the problem (the traceback only goes to the log)."""
    log.warning("%s: %s: %s", title, type(exc).__name__, error_text(exc))
    (where or st).error(f"**{title}.** {type(exc).__name__}: {error_text(exc)}", icon=":material/error:")


_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>$~:])")


def md_escape(text: str) -> str:
    """Model output shown literally in st.markdown (no emphasis, links, LaTeX or emoji codes)."""
    return _MD_SPECIAL.sub(r"\\\1", text).replace("\n", "  \n")


def fmt_bytes(n: float) -> str:
    """Bytes in human units."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def fmt_seconds(s: float) -> str:
    """Seconds in ms or s."""
    return f"{s * 1000:.0f} ms" if s < 1 else f"{s:.2f} s"


# ----------------------------------------------------------------------------- experiment choice
def try_choose_experiment(path: str, where: Any = None) -> bool:
    """Validate and choose an experiment file; a bad file shows st.error and changes nothing."""
    try:
        state.experiment(str(path))
    except CORE_ERRORS as exc:
        show_error(f"Cannot use experiment {path}", exc, where)
        return False
    state.choose_experiment(path)
    return True


def bar_progress(bar: Any, lo: float = 0.0, hi: float = 1.0, prefix: str = "") -> Callable[[float, str], None]:
    """A core progress callback drawing on ``bar`` (st.progress): fraction clamped to [0, 1]
    and mapped onto [lo, hi], message shown after ``prefix``."""

    def update(frac: float, msg: str) -> None:
        bar.progress(lo + (hi - lo) * min(max(float(frac), 0.0), 1.0), text=prefix + msg)

    return update


def request_demo(kind: str) -> None:
    """on_click: ask for a demo build (done in the main area with a progress bar)."""
    st.session_state[state.K_PENDING_DEMO] = kind


def run_pending_demo_build() -> None:
    """Build the demo asked for (if any) with a live progress bar, then choose it."""
    kind = st.session_state.get(state.K_PENDING_DEMO)
    if not kind:
        return
    st.session_state[state.K_PENDING_DEMO] = None
    quick = kind == "quick"
    with st.status(f"Building the {'quick' if quick else 'full'} embedded demo…", expanded=True) as status:
        bar = st.progress(0.0, text="starting")

        try:
            path = state.build_demo(quick, progress=bar_progress(bar))
        except CORE_ERRORS as exc:
            status.update(label="Demo build failed", state="error")
            show_error("Could not build the demo", exc)
            return
        status.update(label=f"Demo ready: {path}", state="complete", expanded=False)
    state.choose_experiment(str(path))
    st.rerun()


def ensure_engine() -> Any:
    """The session's engine, loading it once per process with a progress bar; None on error."""
    path = state.experiment_path()
    if not path:
        return None
    engine = state.loaded_engine(path)
    if engine is not None:
        return engine
    with st.status(f"Loading experiment {path}…", expanded=True) as status:
        bar = st.progress(0.0, text="reading checkpoints")

        try:
            engine = state.get_engine(path, progress=bar_progress(bar))
        except CORE_ERRORS as exc:
            status.update(label="Loading failed", state="error")
            st.session_state[state.K_LOAD_ERROR] = f"Could not load experiment {path}: {type(exc).__name__}: {error_text(exc)}"
            log.warning("loading %s failed: %s", path, error_text(exc))
            st.session_state[state.K_EXP] = None
        else:
            vec = engine.vectors
            status.update(
                label=f"Loaded {engine.experiment.name} in {fmt_seconds(engine.load_seconds)} "
                f"(vectors {'from cache' if vec.from_cache else 'computed'} in {fmt_seconds(vec.seconds)})",
                state="complete", expanded=False,
            )
            return engine
    st.rerun()  # redraw the sidebar without the experiment that failed; the error stays in session state


ENTRY_FLAG = "_msa_entrypoint_running"


def page_guard() -> None:
    """Send a page that runs without app.py (legacy pages/ mode) back through the entrypoint."""
    if not st.session_state.get(ENTRY_FLAG):
        st.switch_page("app.py")


def require_engine() -> Any:
    """For pages: the engine, or the first-start offer (build the demo / pick a file) and stop."""
    page_guard()
    engine = state.loaded_engine()
    if engine is not None:
        return engine
    no_experiment_offer()
    st.stop()


def no_experiment_offer() -> None:
    """What a page shows when no experiment is loaded: a prominent offer to build the demo."""
    err = st.session_state.get(state.K_LOAD_ERROR)
    if err:
        st.error(err, icon=":material/error:")
    with st.container(border=True, key="demo_offer"):
        st.markdown("### No experiment loaded\nStart with the **embedded demo**: a small Llama model trained "
                    "on fictitious authors, built on this machine with no download. Or load an experiment "
                    "file from the sidebar.")
        quick_default = state.demo_quick_default()
        kind = st.radio("Demo size", ["full", "quick"], index=1 if quick_default else 0, horizontal=True,
                        key="w_offer_kind",
                        format_func=lambda k: "Full (clear forgetting effect, a few minutes)" if k == "full"
                        else "Quick (under a minute, weak effect)")
        st.button("Build the embedded demo", type="primary", key="w_offer_build", on_click=request_demo, args=(kind,))


def engine_sidebar_info(engine: Any) -> None:
    """Device, dtype, memory in use and the vector-cache status."""
    if engine is None:
        return
    st.subheader("Engine")
    st.caption(f"**{engine.experiment.name}** · {engine.parameter_count / 1e6:.2f} M parameters")
    st.caption(f"Device `{engine.device}` · dtype `{str(engine.dtype).replace('torch.', '')}`")
    try:
        mem = engine.memory_bytes()
    except CORE_ERRORS:
        mem = {}
    if mem:
        st.caption("Memory: " + ", ".join(f"{k} {fmt_bytes(v)}" for k, v in mem.items()))
    if getattr(engine, "compose_path", ""):
        st.caption(f"Last recompose: {fmt_seconds(engine.last_compose_seconds)} · {engine.compose_path}")
    vec = engine.vectors
    st.caption(f"Vectors: {'loaded from cache' if vec.from_cache else 'computed'} in {fmt_seconds(vec.seconds)} "
               f"· `{vec.path}`")


def best_point_or_none() -> Optional[tuple[float, float]]:
    """The store's best (α, β) for the loaded experiment: highest forget quality among points
    keeping ≥ 90% of the corrupted model's utility (any utility when that is unknown); or None."""
    engine = state.loaded_engine()
    if engine is None:
        return None
    store = state.results_store()
    try:
        df = store.grid(engine.fingerprint)
        if df.empty:
            return None
        util = next((m for m in ("model_utility", "model_utility_tf") if m in df and df[m].notna().any()), None)
        base = df[(df["alpha"] == 0) & (df["beta"] == 0)]
        best = None
        if util is not None and not base.empty and base[util].notna().any():
            best = store.best_point(engine.fingerprint, min_values={util: 0.9 * float(base[util].max())})
        best = best or store.best_point(engine.fingerprint)
    except CORE_ERRORS as exc:
        log.warning("best point unavailable: %s", exc)
        return None
    if best is None:
        return None
    a, b = float(best["alpha"]), float(best["beta"])
    lo_a, hi_a = engine.experiment.alpha_range
    lo_b, hi_b = engine.experiment.beta_range
    return (a, b) if lo_a <= a <= hi_a and lo_b <= b <= hi_b else None


# ----------------------------------------------------------------------------- metrics
def metric_info(name: str) -> Any:
    """The eval module's MetricInfo for ``name`` (None for a metric it does not describe)."""
    from msa_core.eval.results import METRIC_INFO

    return METRIC_INFO.get(name)


def direction_text(name: str) -> str:
    """'higher is better (ideal 1)', 'closer to 0 is better', ... ('' when unknown)."""
    info = metric_info(name)
    return info.direction_text() if info is not None else ""


def arrow(name: str) -> str:
    """↑ (higher is better), ↓ (lower is better) or → (closer to a target is better)."""
    info = metric_info(name)
    if info is None:
        return ""
    return {"higher": "↑", "lower": "↓"}.get(info.direction, "→")


def metric_label(name: str, with_direction: bool = True) -> str:
    """A metric's label, with its better direction, e.g. 'Model utility (↑ higher is better (ideal 1))'."""
    info = metric_info(name)
    label = info.label if info is not None else name
    if not with_direction or info is None:
        return label
    return f"{label} ({arrow(name)} {direction_text(name)})"


def delta_color(name: str) -> str:
    """st.metric's delta_color so that green always means 'better'."""
    info = metric_info(name)
    if info is None:
        return "off"
    return {"higher": "normal", "lower": "inverse"}.get(info.direction, "off")


def layer_norms(norms: dict[str, dict[str, float]]) -> pd.DataFrame:
    """Per-layer ‖τ_f‖, ‖τ_r‖ (L2 over the layer's tensors) and their cosine, from per-tensor norms.

    Tensors outside ``layers.N`` are grouped as 'embed' (before) and 'head' (after).
    """
    agg: dict[str, list[float]] = {}
    order: dict[str, float] = {}
    for name, n in norms.items():
        m = re.search(r"(?:^|\.)layers\.(\d+)\.", name)
        if m:
            key, pos = f"L{int(m.group(1))}", float(m.group(1))
        elif "embed" in name:
            key, pos = "embed", -1.0
        else:
            key, pos = "head", 1e9
        f, r, c = float(n.get("forget", 0.0)), float(n.get("retain", 0.0)), float(n.get("cosine", 0.0))
        acc = agg.setdefault(key, [0.0, 0.0, 0.0])
        acc[0] += f * f
        acc[1] += r * r
        acc[2] += c * f * r
        order[key] = pos
    rows = []
    for key in sorted(agg, key=lambda k: order[k]):
        f2, r2, dot = agg[key]
        nf, nr = math.sqrt(f2), math.sqrt(r2)
        rows.append({"layer": key, "forget": nf, "retain": nr, "cosine": dot / (nf * nr) if nf > 0 and nr > 0 else 0.0})
    return pd.DataFrame(rows, columns=["layer", "forget", "retain", "cosine"])


# ----------------------------------------------------------------------------- answers
GOLD_THRESHOLD = 0.6


def gold_overlap(answer: str, gold: str) -> float:
    """ROUGE-L recall of ``answer`` against ``gold`` (stemmed, TOFU's ROUGE convention)."""
    from msa_core.eval.metrics import rouge_l_recall

    if not gold.strip() or not answer.strip():
        return 0.0
    return float(rouge_l_recall(gold, answer))


HEADLINE = ("forget_quality", "model_utility", "model_utility_tf", "forget_truth_ratio", "forget_prob",
            "retain_prob", "extraction_strength", "muse_privleak")


def metric_row(values: dict[str, float], base: Optional[dict[str, float]], key: str) -> None:
    """Headline metrics as st.metric tiles (delta vs ``base``, green = better) plus a full table."""
    shown = [m for m in HEADLINE if m in values][:6]
    with st.container(key=key):
        cols = st.columns(max(1, len(shown)))
        for col, name in zip(cols, shown):
            v = values[name]
            delta = None if base is None or name not in base else v - base[name]
            col.metric(metric_label(name, with_direction=False) + f" {arrow(name)}", f"{v:.3g}",
                       None if delta is None else f"{delta:+.3g}", delta_color=delta_color(name),
                       help=direction_text(name))
        rows = [{"metric": metric_label(n, with_direction=False), "name": n, "value": v,
                 "corrupted": None if base is None else base.get(n), "better": direction_text(n)}
                for n, v in values.items()]
        with st.expander("All metrics"):
            st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")


def eval_cli_lines(src: str, alpha: float, beta: float, metrics: Optional[dict[str, Any]] = None) -> list[str]:
    """The ``msa`` evaluation commands that reproduce the metrics of this view (same tier,
    benchmark and subset as ``metrics``, an EvalResult JSON, when given)."""
    base = f"msa eval {src} --alpha {alpha:g} --beta {beta:g}"
    if metrics:
        subset = (metrics.get("settings") or {}).get("subset")
        line = f"{base} --tier {metrics.get('tier', 'fast')} --benchmark {metrics.get('benchmark', 'all')}"
        lines = [line + (f" --subset {subset}" if subset else "") + " --json -"]
    else:
        lines = [f"{base} --tier fast --json -"]
    return lines + [f"{base} --tier full --json -", f"msa results {src}"]


# ----------------------------------------------------------------------------- entities
_NAME_RE = re.compile(r"[A-Z][\w'’\-]*(?:\s+(?:(?:de|da|del|van|von|der|al|el|bin|la|le)\s+)?[A-Z][\w'’\-]*){1,3}")
_LEADING = {"What", "Who", "Where", "When", "How", "Which", "Why", "Can", "Could", "Is", "Are", "Was", "Were",
            "Did", "Does", "Do", "Has", "Have", "In", "The", "A", "An", "Tell", "Question", "Answer", "Yes", "No"}


def _names(text: str) -> list[str]:
    out = []
    for m in _NAME_RE.finditer(text):
        words = m.group(0).split()
        while words and words[0] in _LEADING:
            words = words[1:]
        name = re.sub(r"(['’]s|[.,'’])$", "", " ".join(words))
        if len(name.split()) >= 2:
            out.append(name)
    return out


def entity_groups(items: list[dict], min_count: int = 3) -> list[tuple[str, list[int]]]:
    """Group QA items by the person they are about: (name, item indices), in order of appearance.

    A name is a run of 2–4 capitalised words found in the question or answer; each item goes
    to its most frequent name seen in at least ``min_count`` items (and in at least 30% as
    many items as the most frequent name), else to the previous item's entity (TOFU lists
    an author's questions together). The current entity wins while its name is mentioned,
    and a new one starts only when at least two of the next three items mention it.
    """
    texts = [f"{it.get('question', '')} {it.get('answer', '')}" for it in items]
    per_item = [_names(t) for t in texts]
    freq: dict[str, int] = {}
    for names in per_item:
        for n in set(names):
            freq[n] = freq.get(n, 0) + 1
    threshold = max(min_count, int(0.3 * max(freq.values(), default=0)))
    groups: dict[str, list[int]] = {}
    current: Optional[str] = None
    for i, names in enumerate(per_item):
        # Switch entity only for a frequent name that the next items keep mentioning.
        good = [n for n in names if freq[n] >= threshold
                and sum(n in later for later in per_item[i + 1 : i + 4]) >= min(2, len(per_item) - i - 1)]
        if good and (current is None or current not in texts[i]):
            current = max(good, key=lambda n: (freq[n], -names.index(n)))
        groups.setdefault(current or "(unnamed)", []).append(i)
    return list(groups.items())
