"""The pieces of MSA Studio's screens shared by the entrypoint and the pages.

The sidebar (experiment picker, α/β sliders with exact inputs and presets, engine panel),
the first-start "build the demo" offer, engine loading and demo building with a live
progress bar, readable errors, and the metric tiles. State comes from :mod:`studio.session`,
caches from :mod:`studio.resources`, words from :mod:`studio.labels`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import pandas as pd
import streamlit as st

from msa_core.paths import default_demo_dir
from msa_core.targets import Point
from studio import labels, resources, session, threads_control

if TYPE_CHECKING:
    from msa_core.engine import Engine
    from msa_core.experiment import Experiment

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
    # an unexpected type is a bug somewhere: its traceback goes to the log (never to the page)
    log.warning("%s: %s: %s", title, type(exc).__name__, error_text(exc), exc_info=not isinstance(exc, CORE_ERRORS))
    (where or st).error(f"**{title}.** {type(exc).__name__}: {error_text(exc)}", icon=":material/error:")


def bar_progress(bar: Any, lo: float = 0.0, hi: float = 1.0, prefix: str = "") -> Callable[[float, str], None]:
    """A core progress callback drawing on ``bar`` (st.progress): fraction clamped to [0, 1]
    and mapped onto [lo, hi], message shown after ``prefix``."""

    def update(frac: float, msg: str) -> None:
        bar.progress(lo + (hi - lo) * min(max(float(frac), 0.0), 1.0), text=prefix + msg)

    return update


def benchmark_choices(exp: Experiment) -> list[str]:
    """The benchmarks a page may evaluate: the experiment's own, plus 'all' when it has both."""
    names = list(exp.benchmarks)
    return names + (["all"] if len(names) > 1 else [])


# ----------------------------------------------------------------------------- experiment choice
def choose_experiment(path: Optional[str]) -> None:
    """Make ``path`` the session's experiment (None: none) and put it first in the recent list."""
    resolved = session.set_experiment_path(path)
    if resolved:
        resources.remember_experiment(resolved)


def try_choose_experiment(path: str, where: Any = None) -> bool:
    """Validate and choose an experiment file; a bad file shows st.error and changes nothing."""
    try:
        resources.experiment(str(path))
    except CORE_ERRORS as exc:
        show_error(f"Cannot use experiment {path}", exc, where)
        return False
    choose_experiment(path)
    return True


# The demo-build controls' one wording (the page's offer and, once an experiment is loaded, the sidebar).
# Build times measured on a 2-core CPU (README, "The embedded demo"): full 600 s, quick 76 s.
DEMO_SIZES = {"full": "Full (clear forgetting effect and the paper's comparisons, about 10 minutes on 2 cores)",
              "quick": "Quick (about a minute, weak effect)"}
DEMO_BUILD_LABEL = "Build the embedded demo"


def experiment_picker() -> None:
    """The sidebar's experiment picker: embedded demo, a file path, or a recently used file."""
    st.sidebar.subheader("Experiment")
    source = st.sidebar.radio(
        "Source", ["Embedded demo", "Experiment file", "Recent"], key="w_exp_source", horizontal=True,
        label_visibility="collapsed",
    )
    if source == "Embedded demo":
        if not session.experiment_path():  # the page shows the one build offer (no_experiment_offer)
            st.sidebar.caption(f"Choose its size and press **{DEMO_BUILD_LABEL}** on the page.")
        else:
            # the size of the demo in use (the quick one's folder is named like default_demo_dir(quick=True)),
            # else the default
            in_use = Path(session.experiment_path() or "").parent
            quick = in_use.name == default_demo_dir(quick=True).name or session.demo_quick_default()
            kind = st.sidebar.radio("Demo size", list(DEMO_SIZES), index=1 if quick else 0,
                                    key="w_demo_kind", format_func=DEMO_SIZES.__getitem__)
            if st.sidebar.button(DEMO_BUILD_LABEL, key="w_demo_build", width="stretch"):
                session.put(session.K_PENDING_DEMO, kind)
    elif source == "Experiment file":
        path = st.sidebar.text_input("Path to an experiment .yaml", key="w_exp_path_input",
                                     placeholder="/path/to/experiment.yaml")
        if st.sidebar.button("Load", key="w_exp_load", width="stretch", disabled=not path.strip()):
            try_choose_experiment(path.strip(), where=st.sidebar)
    else:
        recents = resources.recent_experiments()
        if not recents:
            st.sidebar.caption("No recently used experiments yet.")
        else:
            choice = st.sidebar.selectbox("Recently used", recents, key="w_exp_recent")
            if st.sidebar.button("Load", key="w_exp_load_recent", width="stretch"):
                try_choose_experiment(choice, where=st.sidebar)
    current = session.experiment_path()
    if current:
        st.sidebar.container(key="exp_current").caption(f"Current: `{current}`")


def _best_point_or_none() -> Optional[Point]:
    engine = resources.loaded_engine()
    if engine is None:
        return None
    try:
        return resources.best_point(engine)
    except CORE_ERRORS as exc:
        log.warning("best point unavailable: %s", exc)
        return None


def coefficient_controls(exp: Experiment) -> None:
    """The sidebar's α/β sliders with matching number inputs, the presets, the θ_clean / e_f / e_r
    pickers (when the experiment offers choices) and the point caption."""
    engine = resources.loaded_engine()
    if engine is not None:
        apply_pending_choice(engine)  # first: the presets' "Best" reads the chosen vectors' results
    session.clamp_point(exp.alpha_range, exp.beta_range)
    st.sidebar.subheader("Coefficients")
    st.sidebar.latex(r"\theta = \theta_c - \alpha\,\tau_f + \beta\,\tau_r")
    fine = st.sidebar.toggle("Fine sliders", key=session.W_FINE,
                             help=f"Sliders that span ±{session.FINE_HALF_WIDTH:g} around the current value in "
                             f"steps of {session.FINE_STEP:g}, for precise moves; the exact inputs take any value.")
    for name, rng, w_slider, w_num, helptext in (
        ("alpha", exp.alpha_range, session.W_ALPHA_SLIDER, session.W_ALPHA_NUM,
         "α scales the forget vector τ_f = θ_forget − θ_clean that is subtracted."),
        ("beta", exp.beta_range, session.W_BETA_SLIDER, session.W_BETA_NUM,
         "β scales the retain vector τ_r = θ_retain − θ_clean that is added back."),
    ):
        symbol = "α" if name == "alpha" else "β"
        c1, c2 = st.sidebar.columns([3, 2], vertical_alignment="bottom")
        value = getattr(session.point(), name)
        if fine:  # a window around the value, re-centred after every move (a different widget: its own key)
            w_slider = session.fine_key(w_slider)
            lo, hi = session.fine_window(value, rng)
            if st.session_state.get(w_slider) != value:
                st.session_state[w_slider] = value
            c1.slider(f"{symbol} ({name}), ±{session.FINE_HALF_WIDTH:g}", min_value=lo, max_value=hi,
                      step=session.FINE_STEP, key=w_slider, on_change=session.sync_from_widget,
                      args=(name, w_slider), help=helptext + " Fine mode: the slider spans "
                      f"±{session.FINE_HALF_WIDTH:g} around the value and re-centres after each move.")
        else:
            if st.session_state.get(w_slider) != value:  # the slider was not drawn while the fine one was
                st.session_state[w_slider] = value
            c1.slider(f"{symbol} ({name})", min_value=float(rng[0]), max_value=float(rng[1]), step=0.05,
                      key=w_slider, on_change=session.sync_from_widget, args=(name, w_slider),
                      help=helptext + " A focused slider also moves with the arrow keys (one step, 0.05).")
        c2.number_input(f"exact {symbol}", min_value=float(rng[0]), max_value=float(rng[1]), step=0.01,
                        format="%.3f", key=w_num, on_change=session.sync_from_widget, args=(name, w_num))
    best = _best_point_or_none()
    presets = st.sidebar.container(horizontal=True, gap="small")
    presets.button("Corrupted", key="w_preset_corrupted", help="(α, β) = (0, 0): the model before unlearning",
                   on_click=session.set_point, args=(0.0, 0.0), width="content")
    presets.button("Paper", key="w_preset_paper", help="(α, β) = (1, 1), the paper's default",
                   on_click=session.set_point, args=(1.0, 1.0), width="content")
    presets.button("Best", key="w_preset_best", disabled=best is None, width="content",
                   help=f"The best stored point: (α, β) = ({best.alpha:g}, {best.beta:g}), highest forget quality "
                   "keeping ≥ 90% of the corrupted model's utility" if best
                   else "No sweep results yet (run one on the Trade-off page)",
                   on_click=session.set_point, args=(best.alpha, best.beta) if best else (0.0, 0.0))
    if engine is not None:
        choice_controls(engine)
    p = session.point()
    st.sidebar.container(key="point_caption").caption(f"Current point: α = {p.alpha:.3f}, β = {p.beta:.3f}")


# ----------------------------------------------------------------------------- θ_clean / epoch choices
def _epoch_value(text: str) -> Optional[int]:
    """A picker's epoch text ("final" or "K") as a Choice's epoch (None: the final model)."""
    return None if text == "final" else int(text)


def _epoch_texts(epochs: list[int]) -> list[str]:
    return ["final"] + [str(k) for k in epochs]


def request_choice(which: str) -> None:
    """on_change of a choice picker: remember the choice the pickers now show (applied, with a
    progress bar, by :func:`apply_pending_choice` on this run). A new θ_clean keeps the epochs it has."""
    from msa_core.choices import Choice

    engine = resources.loaded_engine()
    if engine is None:
        return
    ss = st.session_state
    clean = str(ss[session.W_CHOICE_CLEAN])
    ef, er = str(ss.get(session.W_CHOICE_EF, "final")), str(ss.get(session.W_CHOICE_ER, "final"))
    try:
        if which == "clean":
            forget_epochs, retain_epochs = resources.choice_epochs(engine, clean)
            ef = ef if ef in _epoch_texts(forget_epochs) else "final"
            er = er if er in _epoch_texts(retain_epochs) else "final"
        session.put(session.K_PENDING_CHOICE, Choice(clean, _epoch_value(ef), _epoch_value(er)))
    except CORE_ERRORS as exc:
        session.put(session.K_CHOICE_MSG, ("error", f"Cannot use that choice: {error_text(exc)}"))


def apply_pending_choice(engine: Engine) -> None:
    """Switch the engine to the choice asked for in the sidebar (if any), with a progress bar
    there: its vectors come from memory or the cache (computed once per choice), θ_corrupted
    stays loaded, the session's (α, β) stays. On failure the engine keeps its choice."""
    choice = session.pop(session.K_PENDING_CHOICE)
    if choice is None or choice == resources.current_choice(engine):
        return
    with st.sidebar.status(f"Switching to {choice.label()}…", expanded=True) as status:
        bar = st.progress(0.0, text="vectors")
        t0 = time.perf_counter()
        try:
            resources.use_choice(engine, choice, progress=bar_progress(bar))
        except CORE_ERRORS as exc:
            status.update(label="Switch failed", state="error")
            log.warning("switching to %s failed: %s", choice.label(), error_text(exc))
            session.put(session.K_CHOICE_MSG, ("error", f"Could not switch to {choice.label()}: "
                                                        f"{type(exc).__name__}: {error_text(exc)}"))
            return
        vec = engine.vectors
        status.update(label=f"Using {choice.label()}", state="complete", expanded=False)
    # What this session showed belongs to the previous vectors (memos follow the new fingerprint).
    for key in (session.K_ANSWERS, session.K_VERDICT, session.K_METRICS_WAIT, session.K_LAST_METRICS):
        session.pop(key)
    session.put(session.K_CHOICE_MSG, ("success", f"Using {choice.label()} (switched in "
                                                  f"{labels.fmt_seconds(time.perf_counter() - t0)}, vectors "
                                                  f"{'from cache' if vec.from_cache else 'computed'})."))


def choice_controls(engine: Engine) -> None:
    """The sidebar's θ_clean picker and e_f / e_r selectors, shown only when the experiment offers
    more than its default choice (a clean_history, or fine-tunes that kept epoch folders)."""
    try:
        if not resources.has_choices(engine):
            return
        cands = resources.choice_candidates(engine)
        current = resources.current_choice(engine)
        forget_epochs, retain_epochs = resources.choice_epochs(engine, current.clean)
    except CORE_ERRORS as exc:
        show_error("Cannot list the θ_clean / epoch choices", exc, st.sidebar)
        return
    ss = st.session_state
    # The pickers show the engine's choice (another session may have switched it; a failed switch
    # leaves it as it was).
    for key, value in ((session.W_CHOICE_CLEAN, current.clean),
                       (session.W_CHOICE_EF, "final" if current.forget_epoch is None else str(current.forget_epoch)),
                       (session.W_CHOICE_ER, "final" if current.retain_epoch is None else str(current.retain_epoch))):
        if ss.get(key) != value:
            ss[key] = value
    names = {c.label: labels.candidate_label(c.label, c.step, c.before_forget) for c in cands}
    shared = (" Applies to every session on this experiment in this server process (one engine each); "
              "α and β stay, θ_corrupted is not reloaded.")
    box = st.sidebar.container(key="choice_pickers")
    box.selectbox("θ_clean checkpoint", list(names), format_func=names.__getitem__, key=session.W_CHOICE_CLEAN,
                  on_change=request_choice, args=("clean",),
                  help="Which checkpoint serves as θ_clean: τ_f = θ_forget − θ_clean and τ_r = θ_retain − θ_clean "
                       "come from it and its own forget / retain fine-tunes. A checkpoint taken before the forget "
                       "data entered training is what MSA assumes; 'task-vector' is θ_clean = θ_corrupted."
                       + shared)
    c1, c2 = box.columns(2)
    for col, title, key, epochs, what in ((c1, "e_f (forget epochs)", session.W_CHOICE_EF, forget_epochs, "forget"),
                                          (c2, "e_r (retain epochs)", session.W_CHOICE_ER, retain_epochs, "retain")):
        col.selectbox(title, _epoch_texts(epochs), key=key, on_change=request_choice, args=(what,),
                      format_func=lambda t: labels.epoch_label(_epoch_value(t)), disabled=not epochs,
                      help=f"Which epoch of the {what} fine-tune of this θ_clean gives θ_{what} ('final': the "
                           "fine-tune folder itself). Only epochs kept by `msa finetune --save-every-epoch` are listed."
                           + shared)
    msg = session.pop(session.K_CHOICE_MSG)
    if msg:
        kind, text = msg
        (box.error if kind == "error" else box.caption)(text)


# ----------------------------------------------------------------------------- demo and engine
def request_demo(kind: str) -> None:
    """on_click: ask for a demo build (done in the main area with a progress bar)."""
    session.put(session.K_PENDING_DEMO, kind)


def run_pending_demo_build() -> None:
    """Build the demo asked for (if any) with a live progress bar, then choose it."""
    kind = session.get(session.K_PENDING_DEMO)
    if not kind:
        return
    session.put(session.K_PENDING_DEMO, None)
    quick = kind == "quick"
    with st.status(f"Building the {'quick' if quick else 'full'} embedded demo…", expanded=True) as status:
        bar = st.progress(0.0, text="starting")
        try:
            path = resources.build_demo(quick, progress=bar_progress(bar))
        except CORE_ERRORS as exc:
            status.update(label="Demo build failed", state="error")
            show_error("Could not build the demo", exc)
            return
        status.update(label=f"Demo ready: {path}", state="complete", expanded=False)
    choose_experiment(str(path))
    st.rerun()


def ensure_engine() -> Optional[Engine]:
    """The session's engine, loading it once per process with a progress bar; None on error."""
    path = session.experiment_path()
    if not path:
        return None
    engine = resources.loaded_engine(path)
    if engine is not None:
        return engine
    with st.status(f"Loading experiment {path}…", expanded=True) as status:
        bar = st.progress(0.0, text="reading checkpoints")
        t0 = time.perf_counter()  # the whole wait, waiting for another session's load included
        try:
            engine = resources.get_engine(path, progress=bar_progress(bar))
        # Any failure, not only CORE_ERRORS: loading runs third-party code (transformers,
        # tokenizers, torch) that can raise TypeError, AttributeError, ImportError, …; letting
        # one escape would leave the experiment chosen and fail again on every rerun.
        except Exception as exc:
            status.update(label="Loading failed", state="error")
            session.put(session.K_LOAD_ERROR,
                        f"Could not load experiment {path}: {type(exc).__name__}: {error_text(exc)}")
            if isinstance(exc, CORE_ERRORS):
                log.warning("loading %s failed: %s", path, error_text(exc))
            else:  # unexpected: the traceback goes to the log, never to the page
                log.exception("loading %s failed unexpectedly", path)
            session.put(session.K_EXP, None)
        else:
            vec = engine.vectors
            apply_pending_choice(engine)  # a choice asked for before the engine existed (a shared link)
            status.update(
                label=f"Loaded {engine.experiment.name} in {labels.fmt_seconds(time.perf_counter() - t0)} "
                f"(engine {labels.fmt_seconds(engine.load_seconds)}, of which vectors "
                f"{'from cache' if vec.from_cache else 'computed'} in {labels.fmt_seconds(vec.seconds)})",
                state="complete", expanded=False,
            )
            return engine
    st.rerun()  # redraw the sidebar without the experiment that failed; the error stays in session state


def page_guard() -> None:
    """Send a page that runs without app.py (Streamlit's v1 pages/ mode) back through the entrypoint.

    NOTE: a hack because Streamlit runs any folder named pages/ beside the entrypoint as a v1
    multipage app until the first st.navigation call of the server process, so a deep link as
    the very first request runs the page alone (no sidebar, no engine). app.py sets
    ``session.K_ENTRY`` around ``nav.run()``. Remove when Streamlit stops detecting pages/.
    """
    if not session.get(session.K_ENTRY):
        st.switch_page("app.py")


def require_engine() -> Engine:
    """For pages: the engine, or the first-start offer (build the demo / pick a file) and stop."""
    page_guard()
    engine = resources.loaded_engine()
    if engine is not None:
        return engine
    no_experiment_offer()
    st.stop()


def device_choices() -> list[str]:
    """The Device select's options: 'auto' plus the devices this machine has (never one it lacks)."""
    from msa_core.engine import available_devices

    return ["auto"] + available_devices()


DTYPE_CHOICES = ["auto", "float32", "bfloat16", "float16"]
VECTOR_DTYPE_CHOICES = ["float32", "bfloat16"]


def placement_choices() -> list[str]:
    """The Placement select's options: 'one device', plus 'auto' (accelerate's device_map) when
    this machine has more than one GPU."""
    from msa_core.engine import available_devices

    gpus = [d for d in available_devices() if d.startswith("cuda")]
    return ["one device", "auto"] if len(gpus) > 1 else ["one device"]


def no_experiment_offer() -> None:
    """What a page shows when no experiment is loaded: a prominent offer to build the demo."""
    err = session.get(session.K_LOAD_ERROR)
    if err:
        st.error(err, icon=":material/error:")
    with st.container(border=True, key="demo_offer"):
        st.markdown("### No experiment loaded\nStart with the **embedded demo**: a small Llama model trained "
                    "on fictitious authors, built on this machine with no download. Or load an experiment "
                    "file from the sidebar.")
        kind = st.radio("Demo size", list(DEMO_SIZES), index=1 if session.demo_quick_default() else 0,
                        horizontal=True, key="w_offer_kind", format_func=DEMO_SIZES.__getitem__)
        st.button(DEMO_BUILD_LABEL, type="primary", key="w_offer_build", on_click=request_demo, args=(kind,))


def engine_sidebar_info(engine: Optional[Engine]) -> None:
    """Device, dtype, memory in use and the vector-cache status."""
    if engine is None:
        return
    st.subheader("Engine")
    st.caption(f"**{engine.experiment.name}** · {engine.parameter_count / 1e6:.2f} M parameters")
    st.caption(f"Device `{engine.device}` · dtype `{str(engine.dtype).replace('torch.', '')}`")
    threads_control.threads_sidebar(engine)  # GPU name, CPU threads (applied here, before the page runs)
    try:
        mem = engine.memory_bytes()
    except CORE_ERRORS:
        mem = {}
    if mem:
        st.caption("Memory: " + ", ".join(f"{k} {labels.fmt_bytes(v)}" for k, v in mem.items()))
    if engine.compose_path:
        st.caption(f"Last recompose: {labels.fmt_seconds(engine.last_compose_seconds)} · {engine.compose_path}")
    vec = engine.vectors
    st.caption(f"Vectors: {'loaded from cache' if vec.from_cache else 'computed'} in "
               f"{labels.fmt_seconds(vec.seconds)} · `{vec.path}`")


# ----------------------------------------------------------------------------- metrics
def metric_row(values: dict[str, float], base: Optional[dict[str, float]], key: str) -> None:
    """Headline metrics as st.metric tiles (delta vs ``base``, green = better) plus a full table."""
    shown = [m for m in labels.HEADLINE if m in values][:6]
    with st.container(key=key):
        cols = st.columns(max(1, len(shown)))
        for col, name in zip(cols, shown):
            v = values[name]
            delta = None if base is None or name not in base else v - base[name]
            col.metric(labels.metric_label(name, with_direction=False) + f" {labels.arrow(name)}", f"{v:.3g}",
                       None if delta is None else f"{delta:+.3g}", delta_color=labels.delta_color(name),
                       help=labels.metric_help(name))
        rows = [{"metric": labels.metric_label(n, with_direction=False), "name": n, "value": v,
                 "corrupted": None if base is None else base.get(n), "better": labels.direction_text(n),
                 "glossary": labels.glossary_url(n)} for n, v in values.items()]
        with st.expander("All metrics"):
            st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch",
                         column_config={"glossary": st.column_config.LinkColumn(display_text="definition ↗")})
