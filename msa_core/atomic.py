"""Atomic writes: a file or a folder appears at its path complete, or not at all.

Every writer of msa_core (experiment files, vector caches, open-unlearning exports, JSON
reports, the app's recent list) goes through here, so a kill or a full disk mid-write never
leaves a half-written file behind and two concurrent writers never share a temp name. The
temp file is made by ``tempfile`` in the target's own folder (same filesystem, so the final
``os.replace`` is atomic) with a unique name ``.<name>.<random>.tmp``.

Folders are built the same way (:func:`temp_dir_beside`, which writes an :data:`OWNER_FILE`
naming the building process) and put in place with :func:`replace_dir`, which keeps an
existing folder at its path until the new one is complete and lets a later run restore it
(:func:`recover_replacement`) if a kill lands between its renames. :func:`clean_stale_temp`
removes the temp folders of processes that no longer run, and only those.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Optional

try:  # NOTE: POSIX only; elsewhere replacements are not serialised across processes.
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

TEMP_SUFFIX = ".tmp"
# Inside every temp folder made by temp_dir_beside: who is building there (pid, its start
# time, host), so that a later run removes the folders of dead processes and only those.
OWNER_FILE = ".msa-owner"
# The name part (after temp_prefix) of a folder moved aside by replace_dir: never removed by
# clean_stale_temp, only restored or removed by recover_replacement.
ASIDE_TAG = "old-"


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
    on exit unless the caller has renamed it away (with :func:`replace_dir`, or
    ``os.replace(tmp, path)``, which keeps the :data:`OWNER_FILE` inside).

    The folder holds :data:`OWNER_FILE` from the start, so that a later run's
    :func:`clean_stale_temp` can tell it from a running build once this process is gone."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=temp_prefix(target), suffix=TEMP_SUFFIX))
    try:
        tmp.chmod(DIR_MODE)
        write_json(tmp / OWNER_FILE, _owner(os.getpid()))
        yield tmp
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------- stale temp folders


def _start_time(pid: int) -> Optional[str]:
    """The start time of process ``pid`` (Linux: /proc/<pid>/stat field 22), to tell a live
    owner from a later process that reuses its id; None where it cannot be read."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


def _owner(pid: int) -> dict[str, Any]:
    return {"pid": pid, "start": _start_time(pid), "host": socket.gethostname()}


def _owner_alive(owner: dict[str, Any]) -> bool:
    """Whether the process recorded in an owner file may still be running (True when unsure)."""
    if owner.get("host") != socket.gethostname():
        return True  # a folder on a shared disk, built on another machine: not ours to judge
    pid = owner.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, owned by another user
    start = owner.get("start")
    now = _start_time(pid)
    return start is None or now is None or now == start


def clean_stale_temp(beside: str | os.PathLike[str]) -> list[Path]:
    """Remove the temp folders made for ``beside`` by processes that no longer run; returns them.

    Only folders named like :func:`temp_dir_beside`'s (``.<name>.*.tmp``) that hold a readable
    :data:`OWNER_FILE` whose process is gone (or whose id now belongs to a later process) are
    removed: a folder of a running build, one without the owner file (not made here) and a
    previous copy moved aside by :func:`replace_dir` are left alone.
    """
    target = Path(beside)
    prefix = temp_prefix(target)
    removed: list[Path] = []
    try:
        entries = list(target.parent.iterdir())
    except FileNotFoundError:
        return removed
    for tmp in entries:
        name = tmp.name
        if not (name.startswith(prefix) and name.endswith(TEMP_SUFFIX)) or name.startswith(prefix + ASIDE_TAG):
            continue
        if tmp.is_symlink() or not tmp.is_dir():
            continue
        try:
            owner = json.loads((tmp / OWNER_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # no (readable) owner file: not a folder this tool made, or one just starting
        if not isinstance(owner, dict) or _owner_alive(owner):
            continue
        shutil.rmtree(tmp, ignore_errors=True)
        if not tmp.exists():
            log.info("removed %s, left by process %s that no longer runs", tmp, owner.get("pid"))
            removed.append(tmp)
    return removed


# ---------------------------------------------------------------- replacing a folder


@contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``folder`` (flock on the directory itself: no lock file
    to leave behind, and the kernel drops it when the holder dies)."""
    if fcntl is None:  # pragma: no cover - Windows
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:  # e.g. ENOLCK on some network file systems: go on unserialised
            log.debug("cannot lock %s (%s); replacing without a lock", folder, exc)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _asides(target: Path) -> list[Path]:
    prefix = temp_prefix(target) + ASIDE_TAG
    found = [p for p in target.parent.iterdir() if p.name.startswith(prefix) and p.name.endswith(TEMP_SUFFIX)]
    return sorted(found, key=lambda p: p.stat().st_mtime)


def _recover_locked(target: Path, is_complete: Callable[[Path], bool]) -> list[str]:
    notes: list[str] = []
    asides = _asides(target)
    if not target.exists() and asides:
        # Killed between "old → aside" and "new → target": the old copy goes back.
        restored = asides.pop()
        os.replace(restored, target)
        notes.append(f"{target}: restored the previous copy from an interrupted replacement ({restored.name})")
    for aside in asides:
        if target.exists() and is_complete(target):
            # Killed after the new copy was in place: the old one is what the replacement removes.
            shutil.rmtree(aside, ignore_errors=True)
            notes.append(f"{target}: finished an interrupted replacement (removed the previous copy {aside.name})")
        else:
            notes.append(f"{target}: an interrupted replacement left the previous copy at {aside}; kept")
    stray = target / OWNER_FILE
    if target.is_dir() and not target.is_symlink() and stray.is_file():
        stray.unlink(missing_ok=True)
    for note in notes:
        log.warning("%s", note)
    return notes


def recover_replacement(target: str | os.PathLike[str], is_complete: Callable[[Path], bool]) -> list[str]:
    """Finish what a killed :func:`replace_dir` left beside ``target``; returns what was done.

    If ``target`` is missing and a previous copy was moved aside, that copy is renamed back;
    a previous copy left beside a complete ``target`` (``is_complete``) is removed. Each
    step is logged as a warning and returned, so callers can report it.
    """
    path = Path(target)
    if not path.parent.is_dir():
        return []
    with _folder_lock(path.parent):
        return _recover_locked(path, is_complete)


def replace_dir(
    new: Path,
    target: str | os.PathLike[str],
    *,
    may_replace: Callable[[Path], bool],
    is_complete: Callable[[Path], bool],
) -> list[str]:
    """Put the complete folder ``new`` (made by :func:`temp_dir_beside`) at ``target``.

    An existing ``target`` is replaced only if ``may_replace(target)`` (else FileExistsError
    naming it), and stays at its path until ``new`` is complete: it is renamed aside to
    ``.<name>.old-<id>.tmp``, ``new`` is renamed onto ``target``, then the aside copy is
    removed. A kill between the two renames leaves the old copy aside, and the next call here
    or to :func:`recover_replacement` renames it back. Renames are serialised across processes
    by a lock on the parent folder. Returns the notes of any recovery done first.
    """
    path = Path(target)
    if not is_complete(new):
        raise ValueError(f"{new} is not a complete build for {path}; not moving it into place")
    with _folder_lock(path.parent):
        notes = _recover_locked(path, is_complete)
        if path.is_symlink() or path.exists():
            if path.is_symlink() or not path.is_dir() or not may_replace(path):
                raise FileExistsError(f"{path} exists and was not made by this tool; refusing to replace it")
            aside = path.with_name(f"{temp_prefix(path)}{ASIDE_TAG}{secrets.token_hex(4)}{TEMP_SUFFIX}")
            os.replace(path, aside)
            try:
                os.replace(new, path)
            except BaseException:
                os.replace(aside, path)  # the old copy goes back where it was
                raise
            (path / OWNER_FILE).unlink(missing_ok=True)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(new, path)
            (path / OWNER_FILE).unlink(missing_ok=True)
    return notes
