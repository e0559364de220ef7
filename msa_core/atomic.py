"""Atomic writes: a file or a folder appears at its path complete, or not at all.

Every writer of msa_core (experiment files, vector caches, open-unlearning exports, JSON
reports, the app's recent list) goes through here, so a kill or a full disk mid-write never
leaves a half-written file behind and two concurrent writers never share a temp name. The
temp file is made by ``tempfile`` in the target's own folder (same filesystem, so the final
``os.replace`` is atomic) with a unique name ``.<name>.<random>.tmp``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

TEMP_SUFFIX = ".tmp"


def _read_umask() -> int:
    # NOTE: os.umask can only be read by setting it; done once at import (before any worker
    # threads exist) so that files and folders made here get the modes a plain open() or
    # mkdir() would give, not mkstemp's private 0600 / 0700.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()
FILE_MODE = 0o666 & ~_UMASK
DIR_MODE = 0o777 & ~_UMASK


def temp_prefix(path: Path) -> str:
    """The name prefix of every temp file or folder made for ``path`` (for clean-up scans)."""
    return f".{path.name}."


@contextmanager
def atomic_file(path: str | os.PathLike[str], mode: str = "w", *, encoding: str = "utf-8") -> Iterator[IO[Any]]:
    """Open a temp file beside ``path`` for writing; on a clean exit it is flushed, fsynced and
    renamed onto ``path``; on any error it is removed and the error re-raised as OSError
    naming ``path`` (OS errors) or unchanged (anything else)."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_file mode must be 'w' or 'wb', got {mode!r}")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=temp_prefix(target), suffix=TEMP_SUFFIX)
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": encoding})) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise OSError(exc.errno, f"writing {target} failed: {exc.strerror or exc}") from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    with atomic_file(path, "w") as fh:
        fh.write(text)
    return Path(path)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    with atomic_file(path, "wb") as fh:
        fh.write(data)
    return Path(path)


def write_json(path: str | os.PathLike[str], payload: Any, *, indent: int = 2) -> Path:
    """Write ``payload`` as JSON (non-JSON values through ``str``) atomically; returns the path."""
    return write_text(path, json.dumps(payload, indent=indent, default=str) + "\n")


@contextmanager
def temp_dir_beside(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A fresh temp folder beside ``path`` (same filesystem) to build a folder in; removed
    on exit unless the caller has renamed it away (e.g. with ``os.replace(tmp, path)``)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=temp_prefix(target), suffix=TEMP_SUFFIX))
    try:
        tmp.chmod(DIR_MODE)
        yield tmp
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
