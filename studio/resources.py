"""Every ``st.cache_*`` wrapper and process-wide memo of MSA Studio, and the results store.

Per server process (``st.cache_resource`` / ``st.cache_data``): the parsed experiment
files, the :class:`~msa_core.engine.Engine` (model, tokenizer, τ_f, τ_r) of each experiment,
the per-question memos of answers, p(gold) and truth ratios (keyed by :func:`model_key`:
fingerprint, dtype, device and module filter), the question sets, the
results store, the reference-model results and the demo-build lock. Heavy objects exist once; sessions share them.

Evaluations go through the same SQLite results store as ``msa eval`` / ``msa sweep``
(``<cache>/results.sqlite``) and are read back from it, so the Playground, Export, the
Trade-off page, the "Best" preset and the CLI all see one source of results.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import streamlit as st

from msa_core import side_cache
from msa_core.atomic import write_json
from msa_core.eval import ReferenceCache, ReferenceStats, ResultStore, evaluate, resolve_reference
from msa_core.eval import probe as core_probe
from msa_core.eval.questions import QAItem, QuestionSets, load_question_sets
from msa_core.eval.settings import lookup_settings
from msa_core.experiment import Experiment, load_experiment
from msa_core.paths import default_cache_dir
from msa_core.progress import Progress
from msa_core.targets import Point, Side, Target
from studio import session

if TYPE_CHECKING:
    import pandas as pd

    from msa_core.choices import Choice
    from msa_core.engine import Engine
    from msa_core.eval.results import EvalResult
    from msa_core.experiment import CleanCandidate

RECENT_FILE = "recent_experiments.json"
MAX_RECENT = 8
# Entries per memo: a few thousand short answers or floats are a few MB at most.
MEMO_SIZE = 4096


# ----------------------------------------------------------------------------- experiments
@st.cache_data(show_spinner=False, max_entries=32)
def _experiment(path: str, mtime_ns: int) -> Experiment:
    return load_experiment(path)


def experiment(path: str) -> Experiment:
    """The parsed experiment file (re-read when the file changes)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"experiment file {p} does not exist")
    return _experiment(str(p), p.stat().st_mtime_ns)


def _recent_path() -> Path:
    return default_cache_dir() / RECENT_FILE


def recent_experiments() -> list[str]:
    """Recently used experiment files that still exist, newest first."""
    try:
        raw = json.loads(_recent_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    if not isinstance(raw, list):
        return []
    return [p for p in raw if isinstance(p, str) and Path(p).is_file()][:MAX_RECENT]


def remember_experiment(path: str) -> None:
    """Put ``path`` first in the recent list (written atomically; a read-only cache only costs the list)."""
    items = [path] + [p for p in recent_experiments() if p != path]
    try:
        write_json(_recent_path(), items[:MAX_RECENT], indent=1)
    except OSError:
        pass


@st.cache_resource(show_spinner=False)
def _demo_lock() -> threading.Lock:
    return threading.Lock()


def build_demo(quick: bool, progress: Optional[Progress] = None) -> Path:
    """Build (or reuse) the embedded demo; one build at a time per server process."""
    from msa_core.demo.build import build_demo as _build

    with _demo_lock():
        return Path(_build(quick=quick, progress=progress))


# ----------------------------------------------------------------------------- engine
@dataclass
class _Slot:
    """A per-process holder: the engine is loaded into it once, under its lock."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    engine: Optional[Engine] = None


@st.cache_resource(show_spinner=False, max_entries=2)
def _engine_slot(path: str, mtime_ns: int, device: str, dtype: str, vector_dtype: str, placement: str) -> _Slot:
    # The slot, not the engine, is the cached value: the engine is then loaded outside
    # the cached function, so its progress bar draws live in the caller's page.
    return _Slot()


def _slot_for(path: str) -> _Slot:
    device, dtype = session.load_options()
    vector_dtype, placement = session.placement_options()
    return _engine_slot(path, Path(path).stat().st_mtime_ns, device, dtype, vector_dtype, placement)


def loaded_engine(path: Optional[str] = None) -> Optional[Engine]:
    """The session's engine if this process already loaded it, else None (never loads)."""
    path = path or session.experiment_path()
    if not path or not Path(path).is_file():
        return None
    return _slot_for(path).engine


def get_engine(path: str, progress: Optional[Progress] = None) -> Engine:
    """The engine for ``path`` (loaded once per process; later calls return it at once)."""
    from msa_core.engine import Engine

    exp = experiment(path)
    device, dtype = session.load_options()
    vector_dtype, placement = session.placement_options()
    spread = placement == "auto"
    slot = _slot_for(path)
    with slot.lock:
        if slot.engine is None:
            slot.engine = Engine.load(
                exp,
                device=None if device == "auto" or spread else device,
                dtype=None if dtype == "auto" else dtype,
                progress=progress,
                vector_dtype=vector_dtype,
                device_map="auto" if spread else None,
            )
            slot.engine.warm_up_async()  # large CPU models: compile the fused kernel before the first move
    return slot.engine


# ----------------------------------------------------------------------------- memos
def model_key(engine: Engine) -> tuple[Hashable, ...]:
    """What identifies the engine's models in every memo: the experiment fingerprint plus the
    model settings (dtype, device type, module filter), so a bf16 or filtered engine of the
    same experiment never sees another engine's answers."""
    return (engine.fingerprint, json.dumps(engine.model_settings, sort_keys=True))


class Memo:
    """A bounded, thread-safe LRU dict shared by every session of the process."""

    def __init__(self, size: int = MEMO_SIZE) -> None:
        self._data: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()
        self._size = size

    def get(self, key: Hashable) -> Any:
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key]
        return None

    def put(self, key: Hashable, value: Any) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self._size:
                self._data.popitem(last=False)


@st.cache_resource(show_spinner=False)
def memo(name: str) -> Memo:
    """The process-wide memo called ``name`` (answers, probabilities, truth ratios)."""
    return Memo()


def memoized_per_item(
    store: Memo, prefix: tuple[Hashable, ...], items: Sequence[Hashable], compute: Callable[[list[Any]], list[Any]]
) -> list[Any]:
    """Look every item up under ``prefix``; compute the missing ones in one batch."""
    found = [store.get(prefix + (it,)) for it in items]
    missing = [i for i, v in enumerate(found) if v is None]
    if missing:
        values = compute([items[i] for i in missing])
        for i, v in zip(missing, values):
            store.put(prefix + (items[i],), v)
            found[i] = v
    return found


def answers(
    engine: Engine, target: Target, questions: Sequence[str], max_new_tokens: int, *, raw: bool = False
) -> core_probe.TimedAnswers:
    """Greedy answers of ``target`` (see :func:`msa_core.eval.probe.generate_for`), memoised per
    question, so a slider move only generates for the unlearned column. A side model's answers
    (corrupted, clean, reference, …) also go through the disk cache of :mod:`msa_core.side_cache`, so
    a new process does not load that model for questions it answered before. The timings are those
    of this call's generation (0 when every answer came from the memo)."""
    timing = [0.0, 0.0]

    def compute(qs: list[str]) -> list[str]:
        if isinstance(target, Side):  # a model that never changes: through the disk cache (msa_core.side_cache)
            t0 = time.perf_counter()
            texts = side_cache.side_answers(engine, target.role, qs, max_new_tokens=max_new_tokens, raw=raw,
                                            cache_dir=default_cache_dir())
            timing[:] = [0.0, time.perf_counter() - t0]
            return texts
        out = core_probe.generate_for(engine, target, qs, max_new_tokens=max_new_tokens, raw=raw)
        timing[:] = [out.compose_seconds, out.generate_seconds]
        return out.texts

    prefix = (*model_key(engine), "raw" if raw else "qa", target, int(max_new_tokens))
    texts = memoized_per_item(memo("answers"), prefix, list(questions), compute)
    return core_probe.TimedAnswers(texts, timing[0], timing[1])


def gold_probabilities(engine: Engine, target: Target, questions: Sequence[str], golds: Sequence[str]) -> list[float]:
    """p(gold | question) per pair (:func:`msa_core.eval.probe.gold_probabilities`), memoised per pair."""

    def compute(pairs: list[tuple[str, str]]) -> list[float]:
        if isinstance(target, Side):  # through the disk cache, like answers()
            return side_cache.side_gold_probabilities(engine, target.role, [p[0] for p in pairs],
                                                      [p[1] for p in pairs], cache_dir=default_cache_dir())
        return core_probe.gold_probabilities(engine, target, [p[0] for p in pairs], [p[1] for p in pairs])

    return memoized_per_item(memo("probs"), (*model_key(engine), target), list(zip(questions, golds)), compute)


def truth_ratio_values(engine: Engine, target: Target, items: Sequence[QAItem]) -> list[float]:
    """Per-item truth ratios (:func:`msa_core.eval.probe.truth_ratio_values`), memoised per item."""

    def compute(batch: list[QAItem]) -> list[float]:
        if isinstance(target, Side):  # through the disk cache, like answers()
            return side_cache.side_truth_ratios(engine, target.role, batch, cache_dir=default_cache_dir())
        return core_probe.truth_ratio_values(engine, target, batch)

    return memoized_per_item(memo("truth_ratios"), (*model_key(engine), target), list(items), compute)


# ----------------------------------------------------------------------------- data
@st.cache_data(show_spinner=False, max_entries=8)
def _question_sets(exp: Experiment, stamp: float) -> QuestionSets:
    return load_question_sets(exp.data)


def question_sets(engine: Engine) -> QuestionSets:
    """The engine's experiment's question sets (re-read when its data folders change)."""
    d = engine.experiment.data
    stamp = max((p.stat().st_mtime for p in (d.tofu, d.muse) if p is not None and p.exists()), default=0.0)
    return _question_sets(engine.experiment, stamp)


# ----------------------------------------------------------------------------- results
def store_path() -> Path:
    """Where results live: the same default as ``msa eval`` / ``msa sweep`` (<cache>/results.sqlite)."""
    return default_cache_dir() / "results.sqlite"


@st.cache_resource(show_spinner=False, max_entries=4)
def _store(path: str) -> ResultStore:
    return ResultStore(Path(path))


def results_store() -> ResultStore:
    """The SQLite results store shared by the CLI and the app (one per cache folder)."""
    return _store(str(store_path()))


@st.cache_resource(show_spinner=False)
def reference_cache() -> ReferenceCache:
    """The process's reference-model results (the app owns it; every session shares it)."""
    return ReferenceCache()


def reference_stats(
    engine: Engine, *, benchmark: str, subset: Optional[int], progress: Optional[Progress] = None
) -> ReferenceStats:
    """What the metrics compare against (:func:`msa_core.eval.resolve_reference`): the reference
    file, or the reference model's evaluation (loaded and evaluated on first use, then from the
    store and the process's reference cache). A page calls it first to time that part on its own."""
    return resolve_reference(engine, benchmark=benchmark, subset=subset, store=results_store(), progress=progress,
                             cache=reference_cache())


def evaluation(
    engine: Engine, at: Point, *, tier: str, benchmark: str, subset: Optional[int],
    progress: Optional[Progress] = None, reference: Optional[ReferenceStats] = None,
) -> EvalResult:
    """The :class:`EvalResult` at ``at``: from the results store when stored there, else
    evaluated and stored (exactly what ``msa eval`` does). ``reference``: from :func:`reference_stats`
    (resolved here when None)."""
    return evaluate(engine, at.alpha, at.beta, tier=tier, benchmark=benchmark, subset=subset, progress=progress,
                    store=results_store(), reference_cache=reference_cache(), reference=reference)


def stored_evaluation(
    engine: Engine, at: Point, *, tier: str, benchmark: str, subset: Optional[int]
) -> Optional[EvalResult]:
    """The newest stored result at ``at`` with this engine's settings (model dtype, device, module
    filter, data) for this tier/benchmark/subset, else None (never computes)."""
    settings = lookup_settings(engine, tier=tier, benchmark=benchmark, subset=subset)
    return results_store().latest(engine.fingerprint, at.alpha, at.beta, tier=tier, lookup_key=settings.lookup_key)


def results_grid(engine: Engine, tier: Optional[str] = None) -> pd.DataFrame:
    """Every stored point of the engine's experiment and model settings (dtype, device, module
    filter) plus the reference's rows (read fresh: SQLite is cheap, so a sweep running
    elsewhere shows up on the next rerun)."""
    return results_store().grid(engine.fingerprint, tier, side_models=("reference",),
                                model_settings=engine.model_settings)


def method_points(engine: Engine, tier: Optional[str] = None) -> pd.DataFrame:
    """The named points of other methods stored for the engine's experiment
    (:meth:`ResultStore.method_grid`), read fresh like :func:`results_grid`."""
    return results_store().method_grid(engine.fingerprint, tier)


@dataclass
class _Restart:
    """Whether this server process still owes its first session the last experiment."""

    pending: bool = True
    lock: threading.Lock = field(default_factory=threading.Lock)


@st.cache_resource(show_spinner=False)
def _restart() -> _Restart:
    return _Restart()


def experiment_after_restart() -> Optional[str]:
    """For the first session of a server process only: the most recently used experiment file
    that still exists (a restarted server comes back where it was), else None. Later sessions
    get None: they start from their URL, and a bare URL is a deliberate fresh start."""
    marker = _restart()
    with marker.lock:
        if not marker.pending:
            return None
        marker.pending = False
    recents = recent_experiments()
    return recents[0] if recents else None


def best_point(engine: Engine) -> Optional[Point]:
    """The store's recommended point inside the experiment's ranges (see
    :meth:`ResultStore.best_tradeoff`), or None when nothing suitable is stored."""
    exp = engine.experiment
    row = results_store().best_tradeoff(engine.fingerprint, alpha_range=exp.alpha_range, beta_range=exp.beta_range,
                                        model_settings=engine.model_settings)
    return None if row is None else Point(row["alpha"], row["beta"])



# ----------------------------------------------------------------------------- layer view (pages/layers.py)
# Entries of the layer-view memo: a Gram-matrix set is (layers+1) N×N float64 matrices (N = the
# tokens of a handful of texts, a few hundred), up to tens of MB for a deep model; 64 bounds it.
LAYER_MEMO_SIZE = 64


@st.cache_resource(show_spinner=False)
def _layer_memo() -> Memo:
    return Memo(LAYER_MEMO_SIZE)


def _layer_memoized(key: tuple[Hashable, ...], compute: Callable[[], Any]) -> Any:
    found = _layer_memo().get(key)
    if found is None:
        found = compute()
        _layer_memo().put(key, found)
    return found


def layer_distances(engine: Engine, at: Point) -> dict[str, Any]:
    """Per-layer relative weight distances of the unlearned model at ``at`` to the corrupted and
    reference models (:func:`msa_core.layers.distances_at`), memoised per point."""
    from msa_core import layers as core_layers

    return _layer_memoized((*model_key(engine), "distances", at),
                           lambda: core_layers.distances_at(engine, at.alpha, at.beta))


def reference_layer_distances(engine: Engine) -> list[Any]:
    """Per-layer ‖θ_reference − θ_corrupted‖ / ‖θ_corrupted‖ (:func:`msa_core.layers.reference_distances`)."""
    from msa_core import layers as core_layers

    return _layer_memoized((*model_key(engine), "reference_distances"),
                           lambda: core_layers.reference_distances(engine))


def hidden_grams(engine: Engine, target: Target, pairs: tuple[tuple[str, str], ...]) -> Any:
    """:func:`msa_core.layers.target_grams` of ``target`` on the (question, answer) ``pairs``, memoised."""
    from msa_core import layers as core_layers

    return _layer_memoized((*model_key(engine), "grams", target, pairs),
                           lambda: core_layers.target_grams(engine, target, pairs))


# ----------------------------------------------------------------------------- θ_clean / epoch choices
# The engine is per process, so its choice (msa_core.choices) is too: a switch applies to every
# session on this experiment. Everything keyed by :func:`model_key` follows it (the fingerprint changes).
# At most this many other choices are drawn as their own series on the Trade-off page (the
# final-epoch ones of every θ_clean candidate come first).
MAX_CHOICE_SERIES = 32


def choice_candidates(engine: Engine) -> list[CleanCandidate]:
    """The θ_clean candidates of the engine's experiment (:func:`msa_core.choices.candidates`), the default first."""
    from msa_core import choices

    return choices.candidates(engine.base_experiment)


def choice_epochs(engine: Engine, clean: str) -> tuple[list[int], list[int]]:
    """(forget epochs, retain epochs): the complete ``epoch-K`` folders of candidate ``clean``'s
    fine-tunes (directory listings; [] when they kept none)."""
    from msa_core import choices

    cand = choices.candidate(engine.base_experiment, clean)
    return choices.epochs_of(Path(cand.forget)), choices.epochs_of(Path(cand.retain))


def has_choices(engine: Engine) -> bool:
    """True when the experiment offers more than its default choice (a clean_history or epoch folders)."""
    if len(choice_candidates(engine)) > 1:
        return True
    forget_epochs, retain_epochs = choice_epochs(engine, "default")
    return bool(forget_epochs or retain_epochs)


def current_choice(engine: Engine) -> Choice:
    """The engine's active :class:`msa_core.choices.Choice` (the default when it never switched)."""
    from msa_core import choices

    return choices.current_choice(engine)


def use_choice(engine: Engine, choice: Choice, progress: Optional[Progress] = None) -> None:
    """Switch the engine to ``choice`` (:func:`msa_core.choices.use_choice`: its vectors from memory, the
    disk cache or computed; θ_corrupted is not reloaded). Nothing happens when it is already active."""
    from msa_core import choices

    if choices.current_choice(engine) == choice:
        return
    choices.use_choice(engine, choice, progress=progress)


def _folder_stamp(folder: Path) -> tuple[Hashable, ...]:
    """(path, (name, size, mtime) of every file directly in ``folder``): changes when a checkpoint is rewritten."""
    try:
        entries = sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in Path(folder).iterdir()
                         if e.is_file())
    except OSError:
        entries = []
    return (str(Path(folder).resolve()), tuple(entries))


def choice_fingerprint(engine: Engine, choice: Choice) -> str:
    """The experiment fingerprint ``choice``'s results are stored under
    (:func:`msa_core.choices.choice_fingerprint`), memoised per version of its checkpoint folders."""
    from msa_core import choices

    derived = choices.experiment_for(engine.base_experiment, choice)
    key = ("choice_fingerprint", choice, *(_folder_stamp(Path(p)) for p in derived.checkpoints.as_dict().values()))
    found = memo("choice_fingerprints").get(key)
    if found is None:
        from msa_core.fingerprints import experiment_fingerprint

        found = experiment_fingerprint(derived)
        memo("choice_fingerprints").put(key, found)
    return str(found)


def other_choice_grids(engine: Engine, tier: Optional[str] = None) -> dict[Choice, pd.DataFrame]:
    """The stored points of every other choice (not the engine's current one) that has any, as
    :func:`results_grid` gives them for the current one (this engine's model settings, the
    reference's rows included): Choice → grid. At most :data:`MAX_CHOICE_SERIES` choices are
    looked at, final epochs first."""
    from msa_core import choices

    current = choices.current_choice(engine)
    every = [c for c in choices.all_choices(engine.base_experiment) if c != current]
    every.sort(key=lambda c: (c.forget_epoch is not None or c.retain_epoch is not None))
    out = {}
    for choice in every[:MAX_CHOICE_SERIES]:
        df = results_store().grid(choice_fingerprint(engine, choice), tier, side_models=("reference",),
                                  model_settings=engine.model_settings)
        if not df.empty:
            out[choice] = df
    return out


def comparison_methods(engine: Engine, tier: Optional[str] = None) -> pd.DataFrame:
    """Other methods' named points for the trade-off plots: those stored under the experiment's own
    fingerprint (gradient baselines and imports unlearn θ_corrupted, whatever θ_clean choice is
    active) and, when another choice is active, those stored under its fingerprint; one row per
    (method, point, settings)."""
    import pandas as pd

    from msa_core import choices

    base = choice_fingerprint(engine, choices.Choice())
    frames = [results_store().method_grid(base, tier)]
    if engine.fingerprint != base:
        frames.append(results_store().method_grid(engine.fingerprint, tier))
    filled = [f for f in frames if not f.empty]
    if len(filled) < 2:
        return filled[0] if filled else frames[0]
    df = pd.concat(filled, ignore_index=True)
    return df.drop_duplicates(subset=["method", "point", "tier", "settings_key"], keep="first").reset_index(drop=True)
