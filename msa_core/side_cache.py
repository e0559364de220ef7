"""The side models' per-question outputs, cached on disk so those models hold no memory while idle.

θ_corrupted, θ_clean, the reference, forget and retain checkpoints never change, so their greedy
answers, p(gold | question) and truth ratios are computed once and kept in SQLite
(``<cache>/side_answers.sqlite``, connections as in :mod:`msa_core.sqlite_db`). A row is keyed by
the settings' hash (:func:`output_key`: the side checkpoint's content fingerprint, the tokenizer's
fingerprint, the prompt format and chat template, what is computed and every generation setting —
max_new_tokens, greedy, model dtype, device type) and by the item (the question text; for
p(gold) also the gold answer; for a truth ratio the whole QA item). A hit needs no model; misses
load the side model (:meth:`Engine.side_model`), compute only the missing items, store them and,
with ``free_after`` (default on CUDA), release the model (:meth:`Engine.release_side_model`).

A cache file that is not a readable SQLite database is set aside (renamed
``side_answers.sqlite.damaged-<time>``, never deleted) with a warning and rebuilt; any other
SQLite failure costs only the cache (the outputs are computed, a warning is logged).

:func:`reference_result` is the reference model's evaluation read from the results store without
loading the model (its settings come from the checkpoint's config); the model is loaded only when
the store does not hold it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Optional

from msa_core.fingerprints import checkpoint_fingerprint
from msa_core.paths import default_cache_dir
from msa_core.progress import Progress
from msa_core.sqlite_db import connect

if TYPE_CHECKING:
    from msa_core.engine import Engine
    from msa_core.eval.results import EvalResult
    from msa_core.eval.run import ReferenceCache
    from msa_core.eval.store import ResultStore

log = logging.getLogger(__name__)

CACHE_FILE = "side_answers.sqlite"
# Bumped when what a row means changes (its settings, how an output is computed): old rows then miss.
SCHEMA_VERSION = 1
# Roles whose outputs are cached: the corrupted model (the engine at α=β=0) and the side checkpoints.
CACHED_ROLES = ("corrupted", "clean", "reference", "forget", "retain")
# What a row holds: greedy QA answers, raw continuations, p(gold | question), truth ratios.
KINDS = ("answer", "raw", "p_gold", "truth_ratio")
# Files of the tokenizer's folder that change how text is encoded or decoded.
_TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "tokenizer.model",
    "vocab.json", "merges.txt", "chat_template.jinja",
)
# Items per SQL statement (well under SQLite's bound-parameter limit).
_CHUNK = 400
_WHAT = "side-model cache"
_SQLITE_HEADER = b"SQLite format 3\x00"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS side_settings (
    key TEXT PRIMARY KEY,      -- sha256 of the settings JSON
    settings TEXT NOT NULL,    -- the settings JSON (role, checkpoint and tokenizer fingerprints, …)
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS side_outputs (
    key TEXT NOT NULL,         -- side_settings.key
    item TEXT NOT NULL,        -- the question (p_gold: question + U+001F + gold; truth_ratio: the item's JSON)
    value TEXT NOT NULL,       -- JSON: the answer text or the number
    created REAL NOT NULL,
    PRIMARY KEY (key, item)
);
"""
# Files already checked (and rebuilt if damaged) by this process.
_CHECKED: set[str] = set()
_CHECK_LOCK = threading.Lock()


# ----------------------------------------------------------------------------- the SQLite file
def cache_path(cache_dir: Optional[Path] = None) -> Path:
    """Where the side-model outputs live: ``<cache_dir or the default cache>/side_answers.sqlite``."""
    return Path(cache_dir if cache_dir is not None else default_cache_dir()) / CACHE_FILE


def _damage(path: Path) -> Optional[str]:
    """Why ``path`` is not a usable SQLite database, or None when it is (or cannot be judged: locked, absent)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(_SQLITE_HEADER))
    except OSError:
        return None
    if not head:
        return None  # an empty file is an empty database
    if head != _SQLITE_HEADER:
        return "not an SQLite database (bad header)"
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error:
        return None
    try:
        row = con.execute("PRAGMA quick_check").fetchone()
    except sqlite3.OperationalError:
        return None  # locked or unreadable right now: not proof of damage
    except sqlite3.DatabaseError as exc:
        return str(exc)
    finally:
        con.close()
    return None if row and row[0] == "ok" else f"integrity check failed: {row[0] if row else 'no answer'}"


def _set_aside(path: Path, reason: str) -> None:
    """Rename a damaged cache file (and its WAL/SHM files) to ``<name>.damaged-<time>``, with a warning."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    moved = None
    for suffix in ("", "-wal", "-shm"):
        src = path.with_name(path.name + suffix)
        if not src.exists():
            continue
        dst = path.with_name(f"{path.name}.damaged-{stamp}{suffix}")
        try:
            src.rename(dst)
        except FileNotFoundError:
            continue  # another process moved it first
        if not suffix:
            moved = dst
    log.warning("%s %s is damaged (%s): set aside as %s and rebuilt", _WHAT, path, reason,
                moved if moved is not None else "(already moved)")


def _check_once(path: Path) -> None:
    key = str(path.absolute())
    with _CHECK_LOCK:
        if key in _CHECKED:
            return
        reason = _damage(path) if path.exists() else None
        if reason is not None:
            _set_aside(path, reason)
        _CHECKED.add(key)


def _with_cache(path: Path, action: str, fn: Callable[[sqlite3.Connection], Any], default: Any) -> Any:
    """Run ``fn`` on a connection to the cache (schema ensured). A damaged file is set aside and
    rebuilt once; any other failure is logged as a warning and ``default`` returned."""
    _check_once(path)
    for attempt in (0, 1):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with connect(path, _WHAT) as con:
                con.executescript(_SCHEMA)
                return fn(con)
        except OSError as exc:
            reason = _damage(path) if attempt == 0 else None
            if reason is None:
                log.warning("%s: cannot %s (%s); computing without the cache", _WHAT, action, exc)
                return default
            _set_aside(path, reason)
    return default


def _read(path: Path, key: str, items: Sequence[str]) -> dict[str, Any]:
    def fn(con: sqlite3.Connection) -> dict[str, Any]:
        out: dict[str, Any] = {}
        unique = list(dict.fromkeys(items))
        for start in range(0, len(unique), _CHUNK):
            chunk = unique[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            rows = con.execute(f"SELECT item, value FROM side_outputs WHERE key = ? AND item IN ({marks})",
                               [key, *chunk]).fetchall()
            for item, value in rows:
                out[item] = json.loads(value)
        return out

    return _with_cache(path, "read", fn, {})


def _write(path: Path, key: str, settings: str, values: dict[str, Any]) -> None:
    def fn(con: sqlite3.Connection) -> None:
        now = time.time()
        con.execute("BEGIN IMMEDIATE")
        try:
            con.execute("INSERT OR IGNORE INTO side_settings (key, settings, created) VALUES (?, ?, ?)",
                        (key, settings, now))
            con.executemany("INSERT OR IGNORE INTO side_outputs (key, item, value, created) VALUES (?, ?, ?, ?)",
                            [(key, item, json.dumps(v), now) for item, v in values.items()])
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

    _with_cache(path, "write", fn, None)


def cached_count(cache_dir: Optional[Path] = None) -> int:
    """How many outputs the cache holds (0 when it does not exist or cannot be read)."""
    path = cache_path(cache_dir)
    if not path.exists():
        return 0
    return int(_with_cache(path, "count", lambda con: con.execute("SELECT COUNT(*) FROM side_outputs").fetchone()[0],
                           0))


def clear_cache(cache_dir: Optional[Path] = None) -> int:
    """Delete every cached side-model output (the file stays, empty); returns how many rows went.
    The next request computes them again. 0 when there is no cache file."""
    path = cache_path(cache_dir)
    if not path.exists():
        return 0

    def fn(con: sqlite3.Connection) -> int:
        con.execute("BEGIN IMMEDIATE")
        n = con.execute("DELETE FROM side_outputs").rowcount
        con.execute("DELETE FROM side_settings")
        con.execute("COMMIT")
        return int(n)

    return int(_with_cache(path, "clear", fn, 0))


# ----------------------------------------------------------------------------- keys
def _folder(engine: Engine, role: str) -> Path:
    if role not in CACHED_ROLES:
        raise ValueError(f"unknown side-model role {role!r}; expected one of {', '.join(CACHED_ROLES)}")
    folder = getattr(engine.experiment.checkpoints, role)
    if folder is None:
        raise KeyError(f"experiment {engine.experiment.name!r} has no {role} checkpoint")
    return Path(folder)


def tokenizer_fingerprint(engine: Engine) -> str:
    """A short hash of the engine's tokenizer: its files (in the corrupted checkpoint's folder,
    where the engine loads it from), size, special token ids and chat template."""
    tok = engine.tokenizer
    folder = Path(engine.experiment.checkpoints.corrupted)
    h = hashlib.sha256(b"msa-tokenizer-v1;")
    for name in _TOKENIZER_FILES:
        p = folder / name
        if p.is_file():
            h.update(f"{name}={hashlib.sha256(p.read_bytes()).hexdigest()};".encode())
    h.update(json.dumps([len(tok), tok.eos_token_id, tok.pad_token_id, tok.bos_token_id,
                         getattr(tok, "chat_template", None)]).encode())
    return h.hexdigest()[:16]


def output_settings(engine: Engine, role: str, kind: str, *, max_new_tokens: Optional[int] = None) -> dict[str, Any]:
    """Everything that changes a side model's ``kind`` output besides the item itself."""
    from msa_core.prompts import format_name

    if kind not in KINDS:
        raise ValueError(f"unknown output kind {kind!r}; expected one of {', '.join(KINDS)}")
    folder = _folder(engine, role)
    generates = kind in ("answer", "raw")
    if generates and (max_new_tokens is None or int(max_new_tokens) < 1):
        raise ValueError(f"max_new_tokens must be >= 1 for {kind!r} outputs, got {max_new_tokens!r}")
    model = engine.model_settings
    return {
        "schema": SCHEMA_VERSION,
        "kind": kind,
        "checkpoint": checkpoint_fingerprint(folder),
        "tokenizer": tokenizer_fingerprint(engine),
        # raw continuations are not wrapped in the QA format
        "prompt_format": None if kind == "raw" else format_name(engine.tokenizer, engine.experiment.prompt_format),
        "max_new_tokens": int(max_new_tokens) if generates and max_new_tokens is not None else None,
        "greedy": True if generates else None,
        "dtype": model["dtype"],
        "device": model["device"],
    }


def output_key(settings: dict[str, Any]) -> tuple[str, str]:
    """(key, settings JSON) of :func:`output_settings`: the key is the JSON's sha256."""
    text = json.dumps(settings, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest(), text


# ----------------------------------------------------------------------------- cached outputs
def _cached(
    engine: Engine, role: str, kind: str, item_keys: Sequence[str], compute: Callable[[list[int]], list[Any]], *,
    max_new_tokens: Optional[int], cache_dir: Optional[Path], free_after: Optional[bool],
) -> list[Any]:
    """Values per item: read from the cache, the missing ones computed (``compute(indices)``) and stored."""
    if not item_keys:
        return []
    key, settings = output_key(output_settings(engine, role, kind, max_new_tokens=max_new_tokens))
    path = cache_path(cache_dir)
    found = _read(path, key, item_keys)
    missing: list[int] = []
    seen: set[str] = set()
    for i, item in enumerate(item_keys):
        if item not in found and item not in seen:
            missing.append(i)
            seen.add(item)
    if missing:
        log.debug("%s: %d of %d %s outputs of %s to compute", _WHAT, len(missing), len(item_keys), kind, role)
        try:
            values = compute(missing)
        finally:
            release = free_after if free_after is not None else engine.device.type == "cuda"
            if release and role != "corrupted":  # 'corrupted' is the engine's own model
                engine.release_side_model(role)
        new = {item_keys[i]: v for i, v in zip(missing, values)}
        _write(path, key, settings, new)
        found.update(new)
    return [found[item] for item in item_keys]


def side_answers(
    engine: Engine, role: str, questions: Sequence[str], *, max_new_tokens: int, raw: bool = False,
    cache_dir: Optional[Path] = None, free_after: Optional[bool] = None,
) -> list[str]:
    """Greedy answers of the ``role`` model (see :data:`CACHED_ROLES`) to ``questions``, from the
    disk cache where it holds them; only the missing ones are generated (one batched call).

    ``raw=True`` continues the prompts as given instead of asking them in the QA format.
    ``free_after`` (None: on CUDA) releases the side model after generating. KeyError names the
    role when the experiment has no such checkpoint."""
    from msa_core.eval.probe import generate_for
    from msa_core.targets import Side

    qs = [str(q) for q in questions]

    def compute(indices: list[int]) -> list[str]:
        return generate_for(engine, Side(role), [qs[i] for i in indices], max_new_tokens=max_new_tokens,
                            raw=raw).texts

    return _cached(engine, role, "raw" if raw else "answer", qs, compute, max_new_tokens=max_new_tokens,
                   cache_dir=cache_dir, free_after=free_after)


def side_gold_probabilities(
    engine: Engine, role: str, questions: Sequence[str], golds: Sequence[str], *,
    cache_dir: Optional[Path] = None, free_after: Optional[bool] = None,
) -> list[float]:
    """p(gold | question) of the ``role`` model per pair (:func:`msa_core.eval.probe.gold_probabilities`),
    cached like :func:`side_answers`."""
    from msa_core.eval.probe import gold_probabilities
    from msa_core.targets import Side

    if len(questions) != len(golds):
        raise ValueError(f"side_gold_probabilities: {len(questions)} questions but {len(golds)} gold answers")
    qs, gs = [str(q) for q in questions], [str(g) for g in golds]

    def compute(indices: list[int]) -> list[float]:
        return gold_probabilities(engine, Side(role), [qs[i] for i in indices], [gs[i] for i in indices])

    items = [f"{q}\x1f{g}" for q, g in zip(qs, gs)]
    return [float(v) for v in _cached(engine, role, "p_gold", items, compute, max_new_tokens=None,
                                      cache_dir=cache_dir, free_after=free_after)]


def _item_json(item: Any) -> str:
    """A QA item (dataclass or mapping) as the JSON of the fields a truth ratio reads."""
    get = item.get if isinstance(item, dict) else (lambda k, d=None: getattr(item, k, d))
    wrong = get("perturbed_answer", None) or get("perturbed_answers", None) or ()
    return json.dumps({"q": get("question"), "a": get("answer"), "p": get("paraphrased_answer"),
                       "w": list(wrong)}, ensure_ascii=False)


def side_truth_ratios(
    engine: Engine, role: str, items: Sequence[Any], *, cache_dir: Optional[Path] = None,
    free_after: Optional[bool] = None,
) -> list[float]:
    """Per-item truth ratios of the ``role`` model (:func:`msa_core.eval.probe.truth_ratio_values`),
    cached like :func:`side_answers` (keyed by the question and every answer the ratio reads)."""
    from msa_core.eval.probe import truth_ratio_values
    from msa_core.targets import Side

    rows = list(items)

    def compute(indices: list[int]) -> list[float]:
        return truth_ratio_values(engine, Side(role), [rows[i] for i in indices])

    return [float(v) for v in _cached(engine, role, "truth_ratio", [_item_json(r) for r in rows], compute,
                                      max_new_tokens=None, cache_dir=cache_dir, free_after=free_after)]


# ----------------------------------------------------------------------------- reference metrics
def reference_max_length(engine: Engine) -> Optional[int]:
    """:func:`msa_core.eval.settings.max_length_for` of the reference model, from its config alone
    (no weights loaded); None when the experiment has no reference checkpoint."""
    from transformers import AutoConfig

    from msa_core.eval.settings import max_length_for

    folder = engine.experiment.checkpoints.reference
    if folder is None:
        return None
    config = AutoConfig.from_pretrained(str(folder), trust_remote_code=engine.experiment.trust_remote_code)
    return max_length_for(SimpleNamespace(config=config))


def reference_result(
    engine: Engine, *, benchmark: str = "all", subset: Optional[int] = None, store: Optional[ResultStore] = None,
    progress: Optional[Progress] = None, batch_size: Optional[int] = None, cache: Optional[ReferenceCache] = None,
    free_after: Optional[bool] = None,
) -> Optional[EvalResult]:
    """:func:`msa_core.eval.run.reference_result` (same settings, same store rows) that loads the
    reference model only when ``store`` does not hold its evaluation, and (``free_after``, None:
    on CUDA) releases it afterwards. None when the experiment has no reference checkpoint."""
    from msa_core.eval.run import evaluate_model
    from msa_core.eval.settings import eval_settings, side_model_settings

    max_length = reference_max_length(engine)
    if max_length is None:
        return None
    exp = engine.experiment
    settings = eval_settings(exp, engine.tokenizer, tier="fast", benchmark=benchmark, subset=subset,
                             max_length=max_length, model=side_model_settings(engine))

    def compute() -> EvalResult:
        stored = store.get(f"{engine.fingerprint}#reference", 0.0, 0.0, "fast", settings.key) if store else None
        if stored is not None:
            return stored
        model = engine.side_model("reference")
        try:
            result = evaluate_model(model, engine.tokenizer, exp, tier="fast", benchmark=benchmark, subset=subset,
                                    progress=progress, batch_size=batch_size, settings=settings,
                                    fingerprint=engine.fingerprint, label="reference")
        finally:
            del model
            if free_after if free_after is not None else engine.device.type == "cuda":
                engine.release_side_model("reference")
        if store is not None:
            store.put(result)
        return result

    if cache is None:
        return compute()
    return cache.get_or_compute((engine.fingerprint, settings.key), compute)
