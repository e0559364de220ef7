"""Every ``st.cache_*`` wrapper and session-state helper of the MSA Studio app.

This module is imported by ``app.py`` and the pages; it is NOT a page (``st.navigation``
does not list it). The split of state:

- Per server process (``st.cache_resource``): the :class:`~msa_core.engine.Engine`
  (model, tokenizer, τ_f, τ_r), the answer / probability / metric memos of the fixed
  models, the results store and the demo-build lock. Heavy objects exist once.
- Per browser session (``st.session_state``): which experiment is chosen, α and β, the
  question selection, the last metrics seen. Every computation at a point (α, β) runs
  inside ``engine.session(alpha, beta)``, so two sessions never see each other's weights.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Hashable, Optional

import streamlit as st

from msa_core.experiment import Experiment, load_experiment
from msa_core.paths import default_cache_dir
from msa_core.progress import Progress
from pages import appdata
from pages.appdata import Memo, recent_experiments, remember_experiment  # noqa: F401 - used by app.py

# Session-state keys (canonical values; widget keys are separate, see set_point).
K_EXP = "msa_exp_path"
K_ALPHA = "msa_alpha"
K_BETA = "msa_beta"
K_DEVICE = "msa_device"
K_DTYPE = "msa_dtype"
K_PENDING_DEMO = "msa_pending_demo"  # None | "quick" | "full": a demo build asked for
K_LOAD_ERROR = "msa_load_error"
W_ALPHA_SLIDER, W_ALPHA_NUM = "w_alpha_slider", "w_alpha_num"
W_BETA_SLIDER, W_BETA_NUM = "w_beta_slider", "w_beta_num"


def demo_quick_default() -> bool:
    """True when ``MSA_DEMO_QUICK=1`` asks for the quick demo (tests and CI use it)."""
    return os.environ.get("MSA_DEMO_QUICK", "").strip().lower() in ("1", "true", "yes", "on")


# ----------------------------------------------------------------------------- session
def init_session() -> None:
    """Put every per-session default in place (idempotent; call once per script run)."""
    ss = st.session_state
    ss.setdefault(K_EXP, None)
    ss.setdefault(K_ALPHA, 1.0)
    ss.setdefault(K_BETA, 1.0)
    ss.setdefault(K_DEVICE, "auto")
    ss.setdefault(K_DTYPE, "auto")
    ss.setdefault(K_PENDING_DEMO, None)
    ss.setdefault(K_LOAD_ERROR, None)


def point() -> tuple[float, float]:
    """The session's current (α, β)."""
    return float(st.session_state[K_ALPHA]), float(st.session_state[K_BETA])


def set_point(alpha: float, beta: float) -> None:
    """Set (α, β) and every widget showing them (call before the widgets render, e.g. in on_click)."""
    ss = st.session_state
    ss[K_ALPHA], ss[K_BETA] = float(alpha), float(beta)
    ss[W_ALPHA_SLIDER] = ss[W_ALPHA_NUM] = float(alpha)
    ss[W_BETA_SLIDER] = ss[W_BETA_NUM] = float(beta)


def sync_from_widget(which: str, widget_key: str) -> None:
    """on_change callback: copy a slider / number input value into the canonical state."""
    ss = st.session_state
    value = float(ss[widget_key])
    if which == "alpha":
        set_point(value, ss[K_BETA])
    else:
        set_point(ss[K_ALPHA], value)


def clamp_point(alpha_range: tuple[float, float], beta_range: tuple[float, float]) -> None:
    """Bring the session's (α, β) inside an experiment's ranges (after switching experiments)."""
    a, b = point()
    a2 = min(max(a, alpha_range[0]), alpha_range[1])
    b2 = min(max(b, beta_range[0]), beta_range[1])
    if (a2, b2) != (a, b) or W_ALPHA_SLIDER not in st.session_state:
        set_point(a2, b2)


def choose_experiment(path: Optional[str]) -> None:
    """Make ``path`` the session's experiment (None: no experiment)."""
    st.session_state[K_EXP] = str(Path(path).expanduser().resolve()) if path else None
    st.session_state[K_LOAD_ERROR] = None
    if path:
        remember_experiment(str(Path(path).expanduser().resolve()))


def experiment_path() -> Optional[str]:
    """The session's chosen experiment file, or None."""
    return st.session_state.get(K_EXP)


def load_options() -> tuple[str, str]:
    """The (device, dtype) the session asked for ('auto' = the engine's choice)."""
    return str(st.session_state[K_DEVICE]), str(st.session_state[K_DTYPE])


# ----------------------------------------------------------------------------- experiment
@st.cache_data(show_spinner=False, max_entries=32)
def _experiment(path: str, mtime_ns: int) -> Experiment:
    return load_experiment(path)


def experiment(path: str) -> Experiment:
    """The parsed experiment file (re-read when the file changes)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"experiment file {p} does not exist")
    return _experiment(str(p), p.stat().st_mtime_ns)


@st.cache_resource(show_spinner=False)
def _demo_lock() -> threading.Lock:
    return threading.Lock()


def build_demo(quick: bool, progress: Optional[Progress] = None) -> Path:
    """Build (or reuse) the embedded demo; one build at a time per server process."""
    from msa_core.demo import build_demo as _build

    with _demo_lock():
        return Path(_build(quick=quick, progress=progress))


# ----------------------------------------------------------------------------- engine
@dataclass
class _Slot:
    """A per-process holder: the engine is loaded into it once, under its lock."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    engine: Any = None


@st.cache_resource(show_spinner=False, max_entries=2)
def _engine_slot(path: str, mtime_ns: int, device: str, dtype: str) -> _Slot:
    # The slot, not the engine, is the cached value: the engine is then loaded outside
    # the cached function, so its progress bar draws live in the caller's page.
    return _Slot()


def _slot_for(path: str) -> _Slot:
    device, dtype = load_options()
    return _engine_slot(path, Path(path).stat().st_mtime_ns, device, dtype)


def loaded_engine(path: Optional[str] = None) -> Any:
    """The session's engine if this process already loaded it, else None (never loads)."""
    path = path or experiment_path()
    if not path or not Path(path).is_file():
        return None
    return _slot_for(path).engine


def get_engine(path: str, progress: Optional[Progress] = None) -> Any:
    """The engine for ``path`` (loaded once per process; later calls return it at once)."""
    from msa_core.engine import Engine

    exp = experiment(path)
    device, dtype = load_options()
    slot = _slot_for(path)
    with slot.lock:
        if slot.engine is None:
            slot.engine = Engine.load(
                exp,
                device=None if device == "auto" else device,
                dtype=None if dtype == "auto" else dtype,
                progress=progress,
            )
            slot.engine.warm_up_async()  # large CPU models: compile the fused kernel before the first move
    return slot.engine


# ----------------------------------------------------------------------------- memos
@st.cache_resource(show_spinner=False)
def memo(name: str) -> Memo:
    """The process-wide memo called ``name`` (answers, probabilities, metrics)."""
    return Memo(4096)


def _memoized_per_item(
    store: Memo, prefix: tuple, items: list[Any], compute: Callable[[list[Any]], list[Any]]
) -> list[Any]:
    """Look every item up under ``prefix``; compute the missing ones in one batch."""
    found = [store.get(prefix + (_hashable(it),)) for it in items]
    missing = [i for i, v in enumerate(found) if v is None]
    if missing:
        values = compute([items[i] for i in missing])
        for i, v in zip(missing, values):
            store.put(prefix + (_hashable(items[i]),), v)
            found[i] = v
    return found


def _hashable(x: Any) -> Hashable:
    return tuple(x) if isinstance(x, (list, tuple)) else x


FIXED_ROLES = ("corrupted", "reference", "clean")


def _model_for_role(engine: Any, role: str) -> Any:
    model = engine.side_model(role)
    if model is None:
        raise KeyError(f"experiment {engine.experiment.name!r} has no {role} checkpoint")
    return model


def _run_on(engine: Any, where: tuple, fn: Callable[[Any], Any]) -> Any:
    """Run ``fn(model)`` on a named side model or on the engine composed at (α, β)."""
    if where[0] == "point":
        with engine.session(where[1], where[2]) as model:
            return fn(model)
    if where[0] == "role" and where[1] == "corrupted":
        with engine.session(0.0, 0.0) as model:
            return fn(model)
    return fn(_model_for_role(engine, where[1]))


def _where(role_or_point: str | tuple[float, float]) -> tuple:
    if isinstance(role_or_point, str):
        return ("role", role_or_point)
    return ("point", float(role_or_point[0]), float(role_or_point[1]))


def answers(
    engine: Any,
    role_or_point: str | tuple[float, float],
    questions: list[str],
    max_new_tokens: int,
    *,
    raw: bool = False,
) -> tuple[list[str], float, float]:
    """Greedy answers of a named model or of the unlearned model at (α, β).

    ``raw=False`` wraps each question in the QA format; ``raw=True`` continues the text as
    given (extraction prompts). Returns (answers, compose_seconds, generate_seconds);
    memoised per question, so a slider move only generates for the unlearned column.
    """
    from msa_core.generation import generate_answers, generate_text

    where = _where(role_or_point)
    timing = {"compose": 0.0, "generate": 0.0}

    def gen(model: Any, qs: list[str]) -> list[str]:
        if raw:
            return generate_text(model, engine.tokenizer, qs, max_new_tokens=max_new_tokens)
        return generate_answers(model, engine.tokenizer, qs, max_new_tokens=max_new_tokens)

    def compute(qs: list[str]) -> list[str]:
        t0 = time.perf_counter()
        if where[0] == "point":
            with engine.session(where[1], where[2]) as model:
                t1 = time.perf_counter()
                out = gen(model, qs)
                timing["compose"] = t1 - t0
                timing["generate"] = time.perf_counter() - t1
                return out
        out = _run_on(engine, where, lambda m: gen(m, qs))
        timing["generate"] = time.perf_counter() - t0
        return out

    prefix = (engine.fingerprint, "raw" if raw else "qa", where, int(max_new_tokens))
    result = _memoized_per_item(memo("answers"), prefix, list(questions), compute)
    return result, timing["compose"], timing["generate"]


def gold_probabilities(
    engine: Any, role_or_point: str | tuple[float, float], questions: list[str], golds: list[str]
) -> list[float]:
    """p(gold | question) for each pair (mean-token-NLL convention), memoised per pair."""
    from msa_core.eval.scoring import answer_probabilities

    where = _where(role_or_point)

    def compute(pairs: list[tuple[str, str]]) -> list[float]:
        qs, gs = [p[0] for p in pairs], [p[1] for p in pairs]
        return [float(x) for x in _run_on(engine, where, lambda m: answer_probabilities(m, engine.tokenizer, qs, gs))]

    prefix = (engine.fingerprint, "prob", where)
    return _memoized_per_item(memo("probs"), prefix, list(zip(questions, golds)), compute)


def truth_ratio_values(engine: Any, role_or_point: str | tuple[float, float], items: list[dict]) -> list[float]:
    """Per-item truth ratio TR = P_pert / P_para (items need perturbed answers), memoised per item."""
    from msa_core.eval.scoring import truth_ratios

    where = _where(role_or_point)
    keyed = [(it["question"], it.get("paraphrased_answer") or it["answer"], tuple(it.get("perturbed_answers") or ()))
             for it in items]

    def compute(keys: list[tuple]) -> list[float]:
        batch = [{"question": q, "answer": a, "perturbed_answers": list(p)} for q, a, p in keys]
        return [float(x) for x in _run_on(engine, where, lambda m: truth_ratios(m, engine.tokenizer, batch))]

    return _memoized_per_item(memo("truth_ratios"), (engine.fingerprint, "tr", where), keyed, compute)


def evaluation(
    engine: Any,
    alpha: float,
    beta: float,
    *,
    tier: str,
    benchmark: str,
    subset: Optional[int],
    progress: Optional[Progress] = None,
) -> Any:
    """An :class:`EvalResult` at (α, β), memoised per process (same inputs, same numbers)."""
    from msa_core.eval import evaluate

    key = (engine.fingerprint, float(alpha), float(beta), tier, benchmark, subset)
    store = memo("evals")
    hit = store.get(key)
    if hit is None:
        hit = evaluate(engine, float(alpha), float(beta), tier=tier, benchmark=benchmark, subset=subset, progress=progress)
        store.put(key, hit)
    return hit


def cached_evaluation(engine: Any, alpha: float, beta: float, *, tier: str, benchmark: str, subset: Optional[int]) -> Any:
    """The memoised result if one exists, else None (never computes)."""
    return memo("evals").get((engine.fingerprint, float(alpha), float(beta), tier, benchmark, subset))


@st.cache_resource(show_spinner=False, max_entries=4)
def _store(path: str) -> Any:
    from msa_core.eval import ResultStore

    return ResultStore(Path(path))


def store_path() -> Path:
    """Where sweep results live: the same default as ``msa sweep`` (cache/results.sqlite)."""
    return default_cache_dir() / "results.sqlite"


def results_store(engine: Any = None) -> Any:
    """The SQLite results store shared by the CLI and the app (one per cache folder)."""
    return _store(str(store_path()))


def results_frame(engine: Any, tier: Optional[str] = None) -> Any:
    """Every stored point of the engine's experiment plus the reference's rows (read fresh:
    SQLite is cheap, so a sweep running elsewhere shows up on the next rerun)."""
    return appdata.results_frame(results_store(), engine.fingerprint, tier)


def widget_mirror(key: str) -> str:
    """The key of a page widget mirroring the canonical value ``key`` (kept across pages)."""
    wkey = "w_" + key
    if wkey not in st.session_state:
        st.session_state[wkey] = st.session_state[key]
    return wkey


def copy_widget(wkey: str, key: str) -> None:
    """on_change callback: copy a mirrored widget's value to its canonical key."""
    st.session_state[key] = st.session_state[wkey]


# ----------------------------------------------------------------------------- data
@st.cache_data(show_spinner=False, max_entries=8)
def _question_sets(tofu: Optional[str], muse: Optional[str], forget: str, retain: str, holdout: str,
                   stamp: float) -> tuple[dict[str, list[dict]], list[str]]:
    return appdata.load_question_sets(tofu, muse, forget, retain, holdout)


def question_sets(engine: Any) -> tuple[dict[str, list[dict]], list[str]]:
    """(set name → items with question/answer/..., problems) for the engine's experiment data (cached)."""
    d = engine.experiment.data
    stamp = max((p.stat().st_mtime for p in (d.tofu, d.muse) if p is not None and p.exists()), default=0.0)
    return _question_sets(str(d.tofu) if d.tofu else None, str(d.muse) if d.muse else None,
                          d.forget_split, d.retain_split, d.holdout_split, stamp)
