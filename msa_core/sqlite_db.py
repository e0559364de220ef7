"""Connections to the project's SQLite files (the results store and its relearning table).

One rule for every connection: autocommit (callers open their own ``BEGIN IMMEDIATE`` where a
write must be atomic), WAL journal so readers never block the writer, a 30 s busy timeout so
several threads or processes (a sweep, the app, ``msa rtt``) can write at once, and every
SQLite failure turned into an ``OSError`` that names the file and what it holds.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Long enough for a writer of a whole sweep point or relearning run to finish on a busy machine.
BUSY_TIMEOUT_MS = 30_000


@contextmanager
def connect(path: Path, what: str) -> Iterator[sqlite3.Connection]:
    """An open connection to ``path`` (closed on exit); ``what`` names the file in errors
    ("results store", "relearning store")."""
    try:
        con = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    except sqlite3.Error as exc:
        raise OSError(f"{what} {path}: cannot open ({exc})") from None
    try:
        con.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        con.execute("PRAGMA journal_mode = WAL")
        con.execute("PRAGMA synchronous = NORMAL")
        yield con
    except sqlite3.DatabaseError as exc:
        raise OSError(f"{what} {path}: {exc}") from None
    finally:
        con.close()
