"""Content fingerprints of checkpoints: a short hash over every weight file's bytes and the
config and tokenizer files, so stale vectors and stored results are never reused for a
checkpoint rewritten in place.

Weight files are hashed in parallel and each file's digest is memoised per file version in
this process (see ``_DIGESTS``).
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from msa_core.checkpoints import weight_files
from msa_core.experiment import Experiment

# Content digests of weight files, keyed by what identifies one version of a file. Owner: this
# module. Reason: hashing a 7B checkpoint takes ~10 s (sha256 at ~1.7 GB/s), and one app
# process fingerprints the same checkpoints on every engine load, vector-cache check and export.
_DIGESTS: dict[tuple[str, int, int, int, int, int], str] = {}
_DIGESTS_LOCK = threading.Lock()
# A file hashed within this many seconds of its last change is not cached: a rewrite in the same
# clock tick can leave size, mtime and even ctime unchanged (git's "racy clean" problem).
_RACY_NS = 2_000_000_000
# Large reads keep hashing near disk speed; one buffer per file being hashed.
_HASH_CHUNK = 8 << 20
# Files other than the weights that change a model's answers (architecture, tokenizer, defaults).
_SIDE_FILES = (
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "added_tokens.json", "tokenizer.model", "vocab.json", "merges.txt", "chat_template.jinja",
)


def _file_key(st: os.stat_result, path: Path) -> tuple[str, int, int, int, int, int]:
    return (str(path.absolute()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


def file_digest(path: Path) -> str:
    """sha256 of a file's content (streamed in 8 MiB reads; cached per file version in this process)."""
    path = Path(path)
    before = path.stat()
    key = _file_key(before, path)
    with _DIGESTS_LOCK:
        hit = _DIGESTS.get(key)
    if hit is not None:
        return hit
    h = hashlib.sha256()
    buf = bytearray(_HASH_CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            h.update(view[:n])
    digest = h.hexdigest()
    settled = time.time_ns() - max(before.st_mtime_ns, before.st_ctime_ns) > _RACY_NS
    if settled and _file_key(path.stat(), path) == key:  # unchanged while we read it
        with _DIGESTS_LOCK:
            _DIGESTS[key] = digest
    return digest


def _digests(files: list[Path]) -> dict[Path, str]:
    """Content digests of several files, hashed in parallel (hashlib and reads release the GIL)."""
    unique = sorted(set(files))
    if len(unique) <= 1:
        return {f: file_digest(f) for f in unique}
    with ThreadPoolExecutor(max_workers=min(4, len(unique), os.cpu_count() or 1)) as pool:
        return dict(zip(unique, pool.map(file_digest, unique)))


def _fingerprint(folder: Path, files: list[Path], digests: dict[Path, str]) -> str:
    h = hashlib.sha256(b"msa-checkpoint-v2;")
    for f in files:
        h.update(f"{f.relative_to(folder)}={digests[f]};".encode())
    for name in _SIDE_FILES:
        p = folder / name
        if p.is_file():
            h.update(f"{name}={hashlib.sha256(p.read_bytes()).hexdigest()};".encode())
    return h.hexdigest()[:16]


def checkpoint_fingerprint(folder: Path) -> str:
    """A short hash of a checkpoint's content: every weight file's bytes, config and tokenizer files.

    Content, not size/mtime: a checkpoint rewritten in place with the same size, mtime and
    header gets a new fingerprint, so stale vectors and stored results are not reused.
    """
    folder = Path(folder)
    files = weight_files(folder)
    return _fingerprint(folder, files, _digests(files))


def checkpoint_fingerprints(folders: Mapping[str, Path]) -> dict[str, str]:
    """:func:`checkpoint_fingerprint` of several folders (by role), every weight file hashed in one pool."""
    files = {role: weight_files(Path(folder)) for role, folder in folders.items()}
    digests = _digests([f for fs in files.values() for f in fs])
    return {role: _fingerprint(Path(folder), files[role], digests) for role, folder in folders.items()}


def experiment_fingerprint(exp: Experiment) -> str:
    """One hash over the fingerprints of every checkpoint in an experiment."""
    h = hashlib.sha256()
    for role, fingerprint in checkpoint_fingerprints(exp.checkpoints.as_dict()).items():
        h.update(f"{role}={fingerprint};".encode())
    return h.hexdigest()[:16]
