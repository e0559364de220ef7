"""The results database: SQLite (WAL) under the cache folder, one row per evaluated point.

A row is keyed by (experiment fingerprint, α, β, tier, settings key) and holds the whole
:class:`EvalResult` as JSON, so a point is either fully stored or absent (one INSERT in
one transaction). Every call opens its own connection with a busy timeout, so several
threads or processes (a sweep and the app) can write at once without corrupting it.
Side-model results (e.g. the reference) are stored under ``"<fingerprint>#<role>"``.

Named points: results of other methods' models on the same experiment (an imported
open-unlearning run, a gradient-based baseline's epoch) carry ``model = "method:<method>/<point>"``
(:func:`method_model`) and are stored, like side models, under ``"<fingerprint>#method:<method>/<point>"``
with α = β = 0; :meth:`ResultStore.method_grid` lists them as series for the trade-off plots.

Runs: the points of one experiment stored under one settings key and tier (one sweep, or
several sweeps with the same settings) form a run (:class:`StoredRun`); :meth:`ResultStore.runs`
lists them and :meth:`ResultStore.delete_run` removes one (only rows this tool stored live here).

Merging: a sweep spread over several hosts writes one store per rank
(``<stem>.rank<R>.sqlite``, :mod:`msa_core.eval.distributed`); :meth:`ResultStore.merge_from`
copies such a store's rows into this one in one transaction. The primary key makes a duplicate
impossible; merging the same file twice adds nothing; where both hold a different row for the same
key, the newer one (``created``) is kept and the conflict is counted in the :class:`MergeReport`.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from msa_core.eval.results import METRIC_ORDER, EvalResult, metric_info
from msa_core.eval.settings import settings_lookup_key
from msa_core.sqlite_db import connect

SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    fingerprint  TEXT NOT NULL,
    alpha        REAL NOT NULL,
    beta         REAL NOT NULL,
    tier         TEXT NOT NULL,
    settings_key TEXT NOT NULL,
    benchmark    TEXT NOT NULL,
    model        TEXT NOT NULL,
    created      REAL NOT NULL,
    seconds      REAL NOT NULL,
    payload      TEXT NOT NULL,
    PRIMARY KEY (fingerprint, alpha, beta, tier, settings_key)
)
"""
GRID_COLUMNS = ("alpha", "beta", "tier", "benchmark", "settings_key", "seconds", "subset", "model")
# The "best" point must stay useful: it keeps at least this share of the corrupted model's
# utility (α = β = 0), so a point that forgets everything by breaking the model never wins.
UTILITY_KEEP = 0.9
UTILITY_METRICS = ("model_utility", "model_utility_tf")


METHOD_PREFIX = "method:"


def method_model(method: str, point: str) -> str:
    """The ``EvalResult.model`` of a named point: ``"method:<method>/<point>"``.

    ``method`` names the series (e.g. "NPO", "GradDiff"); ``point`` one model of it (an epoch,
    a run folder's name). Neither may be empty, and ``method`` may not contain "/"."""
    method, point = str(method).strip(), str(point).strip()
    if not method or not point:
        raise ValueError(f"a named point needs a method and a point name, got {method!r} / {point!r}")
    if "/" in method:
        raise ValueError(f"method name {method!r} may not contain '/'")
    return f"{METHOD_PREFIX}{method}/{point}"


def split_method_model(model: str) -> Optional[tuple[str, str]]:
    """(method, point) of a named point's model string, or None for any other model."""
    if not model.startswith(METHOD_PREFIX) or "/" not in model:
        return None
    method, point = model[len(METHOD_PREFIX):].split("/", 1)
    return method, point


@dataclass(frozen=True)
class StoredRun:
    """The points of one experiment stored under one (tier, settings key): a sweep's run."""

    fingerprint: str
    tier: str
    settings_key: str
    benchmark: str
    subset: Optional[int]
    points: int
    alpha_range: tuple[float, float]
    beta_range: tuple[float, float]
    first: float  # time.time() of the oldest point
    last: float  # … and of the newest

    def label(self) -> str:
        """A one-line description for a picker: tier, benchmark, items, points, α/β spans, when."""
        items = "all items" if self.subset is None else f"first {self.subset} items"
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(self.last))
        return (f"{self.tier} · {self.benchmark} · {items} · {self.points} points · "
                f"α {self.alpha_range[0]:g}–{self.alpha_range[1]:g} · β {self.beta_range[0]:g}–{self.beta_range[1]:g}"
                f" · last {when} · settings {self.settings_key[:8]}")


def _coef(x: Optional[float]) -> float:
    """Coefficients are keyed rounded to 10 significant digits (0.1 + 0.2 == 0.3 here)."""
    return 0.0 if x is None else float(f"{float(x):.10g}")


def store_fingerprint(result: EvalResult) -> str:
    """The fingerprint a result is stored under (side models get a '#role' suffix)."""
    return result.fingerprint if result.model == "composed" else f"{result.fingerprint}#{result.model}"


@dataclass(frozen=True)
class MergeReport:
    """What :meth:`ResultStore.merge_from` did with one source store's rows."""

    source: Path
    rows: int  # rows read from the source
    added: int  # keys the target did not hold
    same: int  # keys the target already held with the same payload (nothing done)
    replaced: int  # conflicts where the source row was newer: it replaced the target's
    kept: int  # conflicts where the target's row was newer (or as new): it stayed
    conflicts: tuple[tuple[str, float, float, str, str], ...] = ()  # the keys of replaced + kept rows

    def describe(self) -> str:
        """One line: '<source>: 12 rows, 10 added, 2 already there, 0 conflicts'."""
        text = (f"{self.source}: {self.rows} row(s), {self.added} added, {self.same} already there, "
                f"{self.replaced + self.kept} conflict(s)")
        if self.replaced + self.kept:
            text += f" (newest kept: {self.replaced} taken from the source, {self.kept} kept from the target)"
        return text


def _result_row(result: EvalResult, model: str) -> dict[str, Any]:
    """One grid row (:data:`GRID_COLUMNS` then the flat metrics) of a result."""
    return {"alpha": result.alpha, "beta": result.beta, "tier": result.tier, "benchmark": result.benchmark,
            "settings_key": result.settings_key, "seconds": result.seconds, "subset": result.settings.get("subset"),
            "model": model, **result.flat()}


def _grid_frame(rows: list[dict[str, Any]]) -> Any:
    """The DataFrame of grid rows: :data:`GRID_COLUMNS`, then the metrics in METRIC_ORDER."""
    import pandas as pd

    base = list(GRID_COLUMNS)
    if not rows:
        return pd.DataFrame(columns=base)
    df = pd.DataFrame(rows)
    order = {name: i for i, name in enumerate(METRIC_ORDER)}
    extra = sorted((c for c in df.columns if c not in base), key=lambda c: (order.get(c, len(order)), c))
    return df[base + extra].reset_index(drop=True)


def results_grid(results: Sequence[EvalResult]) -> Any:
    """The DataFrame :meth:`ResultStore.grid` would give for these composed-model results (in the
    order given): for results that are not all in one store, e.g. gathered from per-rank stores."""
    return _grid_frame([_result_row(r, "composed") for r in results])


_KEY_COLUMNS = ("fingerprint", "alpha", "beta", "tier", "settings_key")


class ResultStore:
    """SQLite results store; see the module docstring."""

    def __init__(self, path: Union[str, os.PathLike, None] = None):
        if path is None:
            from msa_core.paths import default_cache_dir

            path = default_cache_dir() / "results.sqlite"
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as con:
            con.execute(SCHEMA)

    def _connect(self) -> AbstractContextManager[sqlite3.Connection]:
        return connect(self.path, "results store")

    @contextmanager
    def _write(self, what: str) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE … COMMIT, rolled back on any failure); an SQLite
        failure becomes OSError naming this store and ``what`` was being done."""
        with self._connect() as con:
            try:
                con.execute("BEGIN IMMEDIATE")
                try:
                    yield con
                    con.execute("COMMIT")
                except BaseException:
                    # SQLite has already rolled back after some errors (a full disk): rolling back
                    # again would raise "no transaction is active" and hide the real cause.
                    if con.in_transaction:
                        con.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise OSError(f"results store {self.path}: cannot {what}: {exc}") from None

    def put(self, result: EvalResult) -> None:
        """Store (or replace) one point atomically."""
        if not result.settings_key:
            raise ValueError("result has no settings key (settings['key']); build settings with eval_settings()")
        payload = json.dumps(result.to_json())
        row = (
            store_fingerprint(result), _coef(result.alpha), _coef(result.beta), result.tier, result.settings_key,
            result.benchmark, result.model, time.time(), float(result.seconds), payload,
        )
        where = f"α={result.alpha}, β={result.beta}, tier {result.tier}"
        with self._write(f"store the result ({where})") as con:
            con.execute("INSERT OR REPLACE INTO results VALUES (?,?,?,?,?,?,?,?,?,?)", row)

    def get(self, fingerprint: str, alpha: float, beta: float, tier: str, settings_key: str) -> Optional[EvalResult]:
        """The stored result of one point, or None."""
        row = self._point_row("payload", fingerprint, alpha, beta, tier, settings_key)
        if row is None:
            return None
        return EvalResult.from_json(json.loads(row[0]), where=f"{self.path} ({fingerprint}, {alpha}, {beta})")

    def stored_at(self, fingerprint: str, alpha: float, beta: float, tier: str, settings_key: str) -> Optional[float]:
        """When the point was stored (``time.time()``), or None when it is not."""
        row = self._point_row("created", fingerprint, alpha, beta, tier, settings_key)
        return None if row is None else float(row[0])

    def has(self, fingerprint: str, alpha: float, beta: float, tier: str, settings_key: str) -> bool:
        """True when the point is stored."""
        return self._point_row("1", fingerprint, alpha, beta, tier, settings_key) is not None

    def _point_row(self, column: str, fingerprint: str, alpha: float, beta: float, tier: str,
                   settings_key: str) -> Optional[tuple[Any, ...]]:
        """``column`` of the one row keyed by (fingerprint, α, β, tier, settings key), or None."""
        with self._connect() as con:
            return con.execute(
                f"SELECT {column} FROM results"
                " WHERE fingerprint=? AND alpha=? AND beta=? AND tier=? AND settings_key=?",
                (fingerprint, _coef(alpha), _coef(beta), tier, settings_key),
            ).fetchone()

    def results(
        self, fingerprint: str, *, tier: Optional[str] = None, settings_key: Optional[str] = None
    ) -> list[EvalResult]:
        """Every stored result of an experiment, ordered by (α, β, tier)."""
        sql = "SELECT payload FROM results WHERE fingerprint=?"
        args: list[Any] = [fingerprint]
        if tier is not None:
            sql += " AND tier=?"
            args.append(tier)
        if settings_key is not None:
            sql += " AND settings_key=?"
            args.append(settings_key)
        with self._connect() as con:
            rows = con.execute(sql + " ORDER BY alpha, beta, tier, created", args).fetchall()
        return [EvalResult.from_json(json.loads(r[0]), where=str(self.path)) for r in rows]

    def runs(self, fingerprint: str, *, tier: Optional[str] = None) -> list[StoredRun]:
        """The runs stored for ``fingerprint`` (exactly: side models and named points, stored under
        '<fingerprint>#…', are not included), newest first."""
        sql = ("SELECT tier, settings_key, COUNT(*), MIN(alpha), MAX(alpha), MIN(beta), MAX(beta), MIN(created),"
               " MAX(created) FROM results WHERE fingerprint=?")
        args: list[Any] = [fingerprint]
        if tier is not None:
            sql += " AND tier=?"
            args.append(tier)
        with self._connect() as con:
            groups = con.execute(sql + " GROUP BY tier, settings_key ORDER BY MAX(created) DESC", args).fetchall()
            out = []
            for tier_, key, n, a0, a1, b0, b1, first, last in groups:
                bench, payload = con.execute(
                    "SELECT benchmark, payload FROM results WHERE fingerprint=? AND tier=? AND settings_key=? LIMIT 1",
                    (fingerprint, tier_, key)).fetchone()
                subset = json.loads(payload).get("settings", {}).get("subset")
                out.append(StoredRun(fingerprint, tier_, key, bench, subset, int(n), (a0, a1), (b0, b1), first, last))
        return out

    def delete_run(self, fingerprint: str, settings_key: str, *, tier: Optional[str] = None) -> int:
        """Delete the rows of one run (``fingerprint`` exactly, one settings key, one tier or all
        tiers) in one transaction; returns how many rows went. Side-model and named-point rows
        (stored under '<fingerprint>#…') are never touched."""
        sql = "DELETE FROM results WHERE fingerprint=? AND settings_key=?"
        args: list[Any] = [fingerprint, settings_key]
        if tier is not None:
            sql += " AND tier=?"
            args.append(tier)
        with self._write(f"delete run {settings_key}") as con:
            n = con.execute(sql, args).rowcount
        return int(n)

    def count(self, fingerprint: Optional[str] = None) -> int:
        """Number of stored rows (of one experiment when given)."""
        with self._connect() as con:
            if fingerprint is None:
                return int(con.execute("SELECT COUNT(*) FROM results").fetchone()[0])
            return int(con.execute("SELECT COUNT(*) FROM results WHERE fingerprint=?", (fingerprint,)).fetchone()[0])

    def grid(
        self,
        fingerprint: str,
        tier: Optional[str] = None,
        settings_key: Optional[str] = None,
        *,
        side_models: Sequence[str] = (),
        model_settings: Optional[dict[str, Any]] = None,
    ) -> Any:
        """A pandas DataFrame, one row per stored point: alpha, beta, tier, benchmark, settings_key,
        seconds, subset, model ('composed', or a side model's role), then one column per metric
        (NaN where a point lacks it). ``side_models`` (e.g. ``("reference",)``) adds the rows
        stored for those models after the composed ones. ``model_settings``
        (:attr:`msa_core.engine.Engine.model_settings`) keeps only the rows of models with those
        settings (side models: the same dtype and device; the module filter never applies to them),
        so a bf16 or filtered sweep is never drawn as a float32 one."""
        rows = []
        for fp, model in [(fingerprint, "composed")] + [(f"{fingerprint}#{role}", role) for role in side_models]:
            want = None
            if model_settings is not None:
                want = dict(model_settings) if model == "composed" else {**model_settings, "module_filter": None}
            for r in self.results(fp, tier=tier, settings_key=settings_key):
                if want is not None and r.settings.get("model") != want:
                    continue
                rows.append(_result_row(r, model))
        return _grid_frame(rows)

    def merge_from(self, source: Union[str, os.PathLike]) -> MergeReport:
        """Copy every row of the results store ``source`` into this one, in one transaction (see the
        module docstring: no duplicates, idempotent, the newest row wins a conflict). ``source`` is
        opened read-only and never changed. FileNotFoundError when it is missing, ValueError when it
        is this store or not a results store, OSError naming the file when SQLite fails."""
        src = Path(source)
        if not src.is_file():
            raise FileNotFoundError(f"results store to merge {src}: no such file")
        if src.resolve() == self.path.resolve():
            raise ValueError(f"results store {src}: cannot merge a store into itself")
        rows = _read_all_rows(src)
        added = same = replaced = kept = 0
        conflicts = []
        where = " AND ".join(f"{c}=?" for c in _KEY_COLUMNS)
        with self._write(f"merge {src}") as con:
            for row in rows:
                key = tuple(row[:5])
                mine = con.execute(f"SELECT created, payload FROM results WHERE {where}", key).fetchone()
                if mine is None:
                    added += 1
                elif mine[1] == row[9]:
                    same += 1
                    continue
                else:
                    conflicts.append(key)
                    if float(row[7]) <= float(mine[0]):
                        kept += 1
                        continue
                    replaced += 1
                con.execute("INSERT OR REPLACE INTO results VALUES (?,?,?,?,?,?,?,?,?,?)", row)
        return MergeReport(src, len(rows), added, same, replaced, kept, tuple(conflicts))

    def method_grid(self, fingerprint: str, tier: Optional[str] = None) -> Any:
        """A pandas DataFrame of the experiment's named points (see the module docstring), one row
        per stored point: method, point, tier, benchmark, settings_key, seconds, model, source (where
        an imported point came from, else None), then one column per metric. Ordered by method,
        then by when the point was stored."""
        import pandas as pd

        pattern = f"{fingerprint}#{METHOD_PREFIX}%"
        sql = "SELECT payload FROM results WHERE fingerprint LIKE ? ESCAPE '\\'"
        args: list[Any] = [pattern.replace("\\", "\\\\").replace("_", "\\_")]
        if tier is not None:
            sql += " AND tier=?"
            args.append(tier)
        with self._connect() as con:
            payloads = con.execute(sql + " ORDER BY created", args).fetchall()
        rows = []
        for (payload,) in payloads:
            r = EvalResult.from_json(json.loads(payload), where=str(self.path))
            named = split_method_model(r.model)
            if named is None:
                continue
            rows.append({"method": named[0], "point": named[1], "tier": r.tier, "benchmark": r.benchmark,
                         "settings_key": r.settings_key, "seconds": r.seconds, "model": r.model,
                         "source": r.settings.get("source"), **r.flat()})
        base = ["method", "point", "tier", "benchmark", "settings_key", "seconds", "model", "source"]
        if not rows:
            return pd.DataFrame(columns=base)
        df = pd.DataFrame(rows)
        order = {name: i for i, name in enumerate(METRIC_ORDER)}
        extra = sorted((c for c in df.columns if c not in base), key=lambda c: (order.get(c, len(order)), c))
        return df.sort_values("method", kind="stable")[base + extra].reset_index(drop=True)

    def latest(
        self, fingerprint: str, alpha: float, beta: float, *, tier: str, lookup_key: str
    ) -> Optional[EvalResult]:
        """The newest stored result of one point for this tier whose settings match ``lookup_key``
        (:attr:`msa_core.eval.settings.EvalSettings.lookup_key` of the caller's engine: same model
        dtype, device, module filter, data, subset, benchmark, …), or None.

        For callers that know their settings but not the reference model's key (the app, which
        shows stored numbers without evaluating): a row of any other settings never matches."""
        with self._connect() as con:
            rows = con.execute(
                "SELECT payload FROM results WHERE fingerprint=? AND alpha=? AND beta=? AND tier=?"
                " ORDER BY created DESC",
                (fingerprint, _coef(alpha), _coef(beta), tier),
            ).fetchall()
        for (payload,) in rows:
            result = EvalResult.from_json(json.loads(payload), where=f"{self.path} ({fingerprint}, {alpha}, {beta})")
            if settings_lookup_key(result.settings) == lookup_key:
                return result
        return None

    def best_point(
        self,
        fingerprint: str,
        *,
        metric: Optional[str] = None,
        tier: Optional[str] = None,
        settings_key: Optional[str] = None,
        min_values: Optional[dict[str, float]] = None,
    ) -> Optional[dict[str, Any]]:
        """The stored point best on ``metric`` (by its METRIC_INFO direction), among points whose
        metrics are >= every ``min_values`` entry; as a dict of the grid row, or None.

        Default metric: forget_quality when stored, else forget_truth_ratio.
        """
        return _best_row(self.grid(fingerprint, tier=tier, settings_key=settings_key), metric, min_values or {},
                         fingerprint)

    def best_tradeoff(
        self,
        fingerprint: str,
        *,
        keep_utility: float = UTILITY_KEEP,
        alpha_range: Optional[tuple[float, float]] = None,
        beta_range: Optional[tuple[float, float]] = None,
        model_settings: Optional[dict[str, Any]] = None,
    ) -> Optional[dict[str, Any]]:
        """The recommended point: highest forget quality among stored points (inside the given
        ranges, of models with ``model_settings`` when given, see :meth:`grid`) keeping
        ≥ ``keep_utility`` × the corrupted model's utility; any utility when the corrupted
        point's utility is not stored. As a dict of the grid row, or None."""
        df = self.grid(fingerprint, model_settings=model_settings)
        for col, rng in (("alpha", alpha_range), ("beta", beta_range)):
            if rng is not None and not df.empty:
                df = df[(df[col] >= rng[0]) & (df[col] <= rng[1])]
        if df.empty:
            return None
        util = next((m for m in UTILITY_METRICS if m in df and df[m].notna().any()), None)
        base = df[(df["alpha"] == 0) & (df["beta"] == 0)]
        floor = {}
        if util is not None and not base.empty and base[util].notna().any():
            floor = {util: keep_utility * float(base[util].max())}
        return _best_row(df, None, floor, fingerprint) or _best_row(df, None, {}, fingerprint)


def _read_all_rows(path: Path) -> list[tuple[Any, ...]]:
    """Every row of the results table of the store at ``path``, opened read-only (columns in
    SCHEMA order). ValueError when the file is not a results store."""
    try:
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30.0)
    except sqlite3.Error as exc:
        raise OSError(f"results store to merge {path}: cannot open ({exc})") from None
    try:
        names = [r[1] for r in con.execute("PRAGMA table_info(results)").fetchall()]
        expected = ["fingerprint", "alpha", "beta", "tier", "settings_key", "benchmark", "model", "created",
                    "seconds", "payload"]
        if names != expected:
            raise ValueError(f"{path} is not a results store (its 'results' table has columns {names or 'none'})")
        return con.execute(f"SELECT {', '.join(expected)} FROM results ORDER BY created").fetchall()
    except sqlite3.DatabaseError as exc:
        raise ValueError(f"{path} is not a results store ({exc})") from None
    finally:
        con.close()


def _best_row(
    df: Any, metric: Optional[str], min_values: dict[str, float], fingerprint: str
) -> Optional[dict[str, Any]]:
    """The grid row best on ``metric`` (default: forget_quality when stored, else
    forget_truth_ratio) among rows whose metrics are >= every ``min_values`` entry."""
    if df.empty:
        return None
    if metric is None:
        metric = next((m for m in ("forget_quality", "forget_truth_ratio") if m in df and df[m].notna().any()), None)
    if metric is None or metric not in df:
        return None
    df = df[df[metric].notna()]
    for name, low in min_values.items():
        if name not in df:
            raise KeyError(f"best_point: metric {name!r} is not stored for {fingerprint}")
        df = df[df[name] >= low]
    if df.empty:
        return None
    return df.loc[df[metric].map(metric_info(metric).badness).idxmin()].to_dict()
