"""θ_clean and epoch choices: which candidate θ_clean, and which epoch of its fine-tunes, MSA uses.

The MSA paper parameterises the method as MSA(ckpt, α, β, e_f, e_r). An experiment's own
``checkpoints:`` are the candidate ``default``; its ``clean_history:`` names others
(:class:`msa_core.experiment.CleanCandidate`). A fine-tune made with
``msa finetune --save-every-epoch`` holds complete model folders ``epoch-1``, ``epoch-2`` … inside
its folder; e_f / e_r pick one of them (None: the folder itself, the final model).

A :class:`Choice` turns into an ordinary experiment with those folders as clean/forget/retain
(:func:`experiment_for`), so its vectors are cached under their own fingerprint
(msa_core.vectors) and its results stored under its own experiment fingerprint; the default
choice is the experiment itself (today's fingerprint and stored results). :func:`use_choice`
swaps a live engine onto a choice without reloading θ_corrupted; the vectors of the last few
choices used in this process stay in memory (``_MEMO``), so switching back reads no file.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from msa_core.checkpoints import weight_files
from msa_core.experiment import (
    DEFAULT_CANDIDATE,
    TASK_VECTOR_LABEL,
    CleanCandidate,
    Experiment,
    check_candidate_label,
)
from msa_core.fingerprints import experiment_fingerprint
from msa_core.paths import default_cache_dir
from msa_core.progress import Progress, report, sub_progress
from msa_core.vectors import VectorSet, compute_vectors, vectors_fingerprint

if TYPE_CHECKING:
    from msa_core.engine import Engine

log = logging.getLogger(__name__)

EPOCH_PREFIX = "epoch-"
_EPOCH_DIR = re.compile(r"epoch-([1-9][0-9]*)")
# Vector sets kept in memory for switching back (each costs 8 bytes per parameter beyond the one
# the engine holds); both bounds apply. Neither changes a result, only what is re-read from disk.
MEMO_ENTRIES = 4
_MEMO_BYTES_ENV = "MSA_CHOICE_MEMO_BYTES"
_MEMO_BYTES_DEFAULT = 8 << 30


@dataclass(frozen=True)
class Choice:
    """Which θ_clean candidate (label; ``default`` = the experiment's checkpoints) and which epoch of
    its forget / retain fine-tunes (None = the final model, the fine-tune folder itself)."""

    clean: str = DEFAULT_CANDIDATE
    forget_epoch: Optional[int] = None
    retain_epoch: Optional[int] = None

    def __post_init__(self) -> None:
        if self.clean != DEFAULT_CANDIDATE:
            check_candidate_label(self.clean, "choice clean")
        for name in ("forget_epoch", "retain_epoch"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"choice {name}: expected an epoch number >= 1 or None (final), got {value!r:.100}")

    def label(self) -> str:
        """e.g. "θ_clean=pretrain-e10, e_f=3, e_r=final"."""
        return f"θ_clean={self.clean}, e_f={_epoch_text(self.forget_epoch)}, e_r={_epoch_text(self.retain_epoch)}"

    @property
    def is_default(self) -> bool:
        """Whether this is the experiment's own checkpoints (final fine-tunes)."""
        return self.clean == DEFAULT_CANDIDATE and self.forget_epoch is None and self.retain_epoch is None


def _epoch_text(epoch: Optional[int]) -> str:
    return "final" if epoch is None else str(epoch)


def task_vector_candidate(corrupted: Path, forget: Path, retain: Path, step: Optional[float] = None) -> CleanCandidate:
    """The paper's "MSA from the final model": θ_clean = θ_corrupted, with ``forget`` / ``retain``
    θ_corrupted fine-tuned on the forget / retain set (label ``task-vector``, before_forget False)."""
    return CleanCandidate(
        TASK_VECTOR_LABEL, Path(corrupted), Path(forget), Path(retain), before_forget=False, step=step
    )


def candidates(exp: Experiment) -> list[CleanCandidate]:
    """Every θ_clean candidate: the experiment's own checkpoints first (``default``, before_forget
    True), then its ``clean_history`` in file order."""
    ck = exp.checkpoints
    own = CleanCandidate(DEFAULT_CANDIDATE, ck.clean, ck.forget, ck.retain, before_forget=True)
    return [own, *exp.clean_history]


def candidate(exp: Experiment, label: str) -> CleanCandidate:
    """The candidate called ``label``; ValueError listing the labels when there is none."""
    found = {c.label: c for c in candidates(exp)}
    if label not in found:
        raise ValueError(f"{exp.name}: no θ_clean candidate {label!r}; available: {', '.join(found)}")
    return found[label]


def _is_model_folder(folder: Path) -> bool:
    """config.json and a complete set of weight files (a sharded index's shards all present)."""
    if not (folder / "config.json").is_file():
        return False
    try:
        return bool(weight_files(folder))
    except (FileNotFoundError, ValueError, OSError):
        return False


def epochs_of(folder: Path) -> list[int]:
    """The epochs K for which ``folder/epoch-K`` is a complete model folder, sorted (a directory
    listing, no weight read); [] when ``folder`` has none or does not exist."""
    try:
        entries = list(Path(folder).iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    out = []
    for entry in entries:
        m = _EPOCH_DIR.fullmatch(entry.name)
        if m and entry.is_dir() and _is_model_folder(entry):
            out.append(int(m.group(1)))
    return sorted(out)


def _epoch_folder(folder: Path, epoch: Optional[int], what: str) -> Path:
    if epoch is None:
        return folder
    available = epochs_of(folder)
    if epoch not in available:
        listed = ", ".join(["final", *map(str, available)])
        raise ValueError(f"{what} {folder} has no complete epoch-{epoch} folder; available epochs: {listed}")
    return folder / f"{EPOCH_PREFIX}{epoch}"


def experiment_for(exp: Experiment, choice: Choice) -> Experiment:
    """``exp`` with checkpoints clean/forget/retain replaced by the choice's folders (``exp`` itself
    for the default choice). ValueError naming the unknown label or epoch and listing the
    available ones."""
    if choice.is_default:
        return exp
    cand = candidate(exp, choice.clean)
    forget = _epoch_folder(Path(cand.forget), choice.forget_epoch, f"θ_clean {cand.label}: forget fine-tune")
    retain = _epoch_folder(Path(cand.retain), choice.retain_epoch, f"θ_clean {cand.label}: retain fine-tune")
    return replace(exp, checkpoints=replace(exp.checkpoints, clean=Path(cand.clean), forget=forget, retain=retain))


def all_choices(exp: Experiment) -> list[Choice]:
    """Every candidate × (final + each epoch of its forget fine-tune) × (final + each epoch of its
    retain fine-tune), the default first; directory listings only."""
    out = []
    for cand in candidates(exp):
        forget_epochs: list[Optional[int]] = [None, *epochs_of(cand.forget)]
        retain_epochs: list[Optional[int]] = [None, *epochs_of(cand.retain)]
        out += [Choice(cand.label, fe, re_) for fe in forget_epochs for re_ in retain_epochs]
    return out


def choice_fingerprint(exp: Experiment, choice: Choice) -> str:
    """The experiment fingerprint a choice's results are stored under."""
    return experiment_fingerprint(experiment_for(exp, choice))


def current_choice(engine: Engine) -> Choice:
    """The engine's active choice (the default when it never switched, or switched back)."""
    choice = getattr(engine, "choice", None)
    return choice if isinstance(choice, Choice) else Choice()


# In-process memo of vector sets by (cache folder, vector dtype of the engine). Owner: this module.
# Reason: switching back to a choice used a moment ago would re-read and re-check its vector files
# (seconds to minutes for a large model). Keyed by the cache folder, whose name is the vectors'
# content fingerprint, so a rewritten checkpoint gets a new key. Bounded: MEMO_ENTRIES entries
# and MSA_CHOICE_MEMO_BYTES bytes (least recently used dropped first).
_MEMO: OrderedDict[tuple[str, str], VectorSet] = OrderedDict()
_MEMO_LOCK = threading.Lock()


def _memo_limit() -> int:
    raw = os.environ.get(_MEMO_BYTES_ENV, "")
    try:
        return int(raw) if raw.strip() else _MEMO_BYTES_DEFAULT
    except ValueError:
        log.warning("%s=%r is not a number of bytes; using %d", _MEMO_BYTES_ENV, raw, _MEMO_BYTES_DEFAULT)
        return _MEMO_BYTES_DEFAULT


def _nbytes(vectors: VectorSet) -> int:
    return sum(t.numel() * t.element_size() for d in (vectors.forget, vectors.retain) for t in d.values())


def _memo_key(target: Path, engine: Engine) -> tuple[str, str]:
    return (str(Path(target).resolve()), str(getattr(engine, "vector_dtype", None)))


def _memo_put(key: tuple[str, str], vectors: VectorSet) -> None:
    limit = _memo_limit()
    size = _nbytes(vectors)
    with _MEMO_LOCK:
        _MEMO.pop(key, None)
        if size > limit:
            return
        _MEMO[key] = vectors
        while len(_MEMO) > MEMO_ENTRIES or sum(_nbytes(v) for v in _MEMO.values()) > limit:
            _MEMO.popitem(last=False)


def _memo_get(key: tuple[str, str]) -> Optional[VectorSet]:
    with _MEMO_LOCK:
        hit = _MEMO.get(key)
        if hit is not None:
            _MEMO.move_to_end(key)
        return hit


def clear_memo() -> None:
    """Forget the vector sets kept in memory (the next switch reads the disk cache)."""
    with _MEMO_LOCK:
        _MEMO.clear()


def vectors_for(
    engine: Engine, choice: Choice, *, cache_dir: Optional[Path] = None, progress: Optional[Progress] = None
) -> tuple[Experiment, VectorSet]:
    """The derived experiment of ``choice`` (on the engine's base experiment) and its vectors: from
    this process's memo, else the disk cache, else computed (and cached) by compute_vectors."""
    derived = experiment_for(engine.base_experiment, choice)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / "vectors" / vectors_fingerprint(derived)
    key = _memo_key(target, engine)
    hit = _memo_get(key)
    if hit is not None:
        report(progress, 1.0, f"vectors of {choice.label()} already in memory")
        return derived, replace(hit, from_cache=True, seconds=0.0)
    vectors = compute_vectors(derived, root, progress)
    _memo_put(key, vectors)
    return derived, vectors


def use_choice(
    engine: Engine, choice: Choice, *, cache_dir: Optional[Path] = None, progress: Optional[Progress] = None
) -> None:
    """Switch ``engine`` to ``choice``: its vectors (:func:`vectors_for`), then
    ``engine.swap_vectors`` (same working model, reset to α = β = 0; clean/forget/retain side models
    dropped; ``engine.experiment`` / ``fingerprint`` / ``choice`` set, ``base_experiment`` unchanged).
    ``engine.choice`` is None for the default choice (see :func:`current_choice`).

    ValueError for an unknown label or epoch (listing the available ones) or checkpoints that do
    not fit θ_corrupted; the engine is unchanged then."""
    current = engine.vectors
    if current is not None and current.path:
        _memo_put(_memo_key(current.path, engine), current)  # so switching back reads nothing
    derived, vectors = vectors_for(engine, choice, cache_dir=cache_dir, progress=sub_progress(progress, 0.0, 0.9))
    report(progress, 0.9, f"switching to {choice.label()}")
    engine.swap_vectors(derived, vectors, choice=None if choice.is_default else choice)
    report(progress, 1.0, f"using {choice.label()}")


__all__ = [
    "TASK_VECTOR_LABEL", "Choice", "all_choices", "candidate", "candidates", "choice_fingerprint", "clear_memo",
    "current_choice", "epochs_of", "experiment_for", "task_vector_candidate", "use_choice", "vectors_for",
]
