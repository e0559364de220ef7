"""Stored relearning runs: one SQLite row per (experiment, model, α, β, settings, held-out fold, lr).

The table ``rtt_runs`` lives in the results database (``cache/results.sqlite`` unless given),
owned by this module (:class:`msa_core.eval.store.ResultStore` never reads it). ``lr = 0``
rows are the unattacked model on the fold. A row is written once, when its attack is done,
in one INSERT OR REPLACE: a killed run resumes from the rows already there, and a rerun
adds no duplicates. ``model`` is "unlearned" (at α, β) or a side model's role (α = β = 0).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from msa_core.rtt.measure import ItemScores
from msa_core.sqlite_db import connect

SCHEMA = """
CREATE TABLE IF NOT EXISTS rtt_runs (
    fingerprint  TEXT NOT NULL,
    model        TEXT NOT NULL,
    alpha        REAL NOT NULL,
    beta         REAL NOT NULL,
    settings_key TEXT NOT NULL,
    fold         INTEGER NOT NULL,
    lr           REAL NOT NULL,
    created      REAL NOT NULL,
    seconds      REAL NOT NULL,
    payload      TEXT NOT NULL,
    PRIMARY KEY (fingerprint, model, alpha, beta, settings_key, fold, lr)
)
"""


def coefficient_key(x: float) -> float:
    """Coefficients and lrs are keyed rounded to 10 significant digits, as the results store does."""
    return float(f"{float(x):.10g}")


def settings_key(key: dict[str, Any]) -> str:
    """A short hash of a JSON-able key (the attack settings, model settings and forget data)."""
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class StoredRun:
    """One stored row: which model, fold and lr, the held-out scores, training losses and seconds."""

    model: str
    alpha: float
    beta: float
    fold: int
    lr: float
    scores: ItemScores
    losses: tuple[float, ...]
    seconds: float


class RttStore:
    """The ``rtt_runs`` table (see the module docstring)."""

    def __init__(self, path: Union[str, os.PathLike, None] = None):
        if path is None:
            from msa_core.paths import default_results_path

            path = default_results_path()
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as con:
            con.execute(SCHEMA)

    def _connect(self) -> AbstractContextManager[sqlite3.Connection]:
        return connect(self.path, "relearning store")

    def put(self, fingerprint: str, key: str, run: StoredRun) -> None:
        """Store (or replace) one run atomically."""
        payload = json.dumps({"scores": run.scores.to_json(), "losses": list(run.losses)})
        c = coefficient_key
        row = (fingerprint, run.model, c(run.alpha), c(run.beta), key, int(run.fold), c(run.lr),
               time.time(), float(run.seconds), payload)
        with self._connect() as con:
            con.execute("INSERT OR REPLACE INTO rtt_runs VALUES (?,?,?,?,?,?,?,?,?,?)", row)

    def get(self, fingerprint: str, key: str, model: str, alpha: float, beta: float, fold: int,
            lr: float) -> Optional[StoredRun]:
        """One stored run, or None."""
        with self._connect() as con:
            row = con.execute(
                "SELECT model, alpha, beta, fold, lr, seconds, payload FROM rtt_runs WHERE fingerprint=? AND "
                "settings_key=? AND model=? AND alpha=? AND beta=? AND fold=? AND lr=?",
                (fingerprint, key, model, coefficient_key(alpha), coefficient_key(beta), int(fold),
                 coefficient_key(lr)),
            ).fetchone()
        return None if row is None else self._run(row)

    def runs(self, fingerprint: str, key: Optional[str] = None) -> list[StoredRun]:
        """Every stored run of an experiment (of one settings key when given)."""
        sql = "SELECT model, alpha, beta, fold, lr, seconds, payload FROM rtt_runs WHERE fingerprint=?"
        args: list[Any] = [fingerprint]
        if key is not None:
            sql += " AND settings_key=?"
            args.append(key)
        with self._connect() as con:
            rows = con.execute(sql + " ORDER BY model, alpha, beta, fold, lr", args).fetchall()
        return [self._run(r) for r in rows]

    def keys(self, fingerprint: str) -> list[tuple[str, float, float]]:
        """(settings key, α, β) of every stored unlearned point of an experiment."""
        with self._connect() as con:
            rows = con.execute("SELECT DISTINCT settings_key, alpha, beta FROM rtt_runs WHERE fingerprint=? AND "
                               "model='unlearned' ORDER BY alpha, beta", (fingerprint,)).fetchall()
        return [(str(k), float(a), float(b)) for k, a, b in rows]

    def count(self, fingerprint: Optional[str] = None) -> int:
        """Number of stored rows (of one experiment when given)."""
        with self._connect() as con:
            if fingerprint is None:
                return int(con.execute("SELECT COUNT(*) FROM rtt_runs").fetchone()[0])
            return int(con.execute("SELECT COUNT(*) FROM rtt_runs WHERE fingerprint=?", (fingerprint,)).fetchone()[0])

    def _run(self, row: tuple[Any, ...]) -> StoredRun:
        model, alpha, beta, fold, lr, seconds, payload = row
        try:
            raw = json.loads(payload)
            scores = ItemScores.from_json(raw["scores"])
            losses = tuple(float(x) for x in raw.get("losses", []))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"relearning store {self.path}: bad row ({model}, fold {fold}, lr {lr}): {exc}") from None
        return StoredRun(str(model), float(alpha), float(beta), int(fold), float(lr), scores, losses, float(seconds))
