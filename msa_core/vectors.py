"""Forget and retain vectors: τ_f = θ_forget − θ_clean, τ_r = θ_retain − θ_clean.

Computed tensor by tensor from the checkpoints (positional reads, no memory maps) in fp32 and streamed straight
to disk, so peak memory is a few tensors, not four models. Stored under
``<cache>/vectors/<fingerprint>/`` as ``forget.safetensors``, ``retain.safetensors`` and
``meta.json`` (inputs, fingerprints, per-tensor norms, file sizes and SHA-256), written
in a temp folder and renamed into place. A cache folder whose files are missing,
truncated, of the wrong size or hash, whose ``meta.json`` is not the expected object, or
whose tensors are not finite, is rebuilt.

Processes share the cache safely: readers hold a shared ``flock`` on
``<cache>/vectors/<fingerprint>.lock`` while they check and load, and a rebuild holds it
exclusively and checks again first, so of several processes finding the same damaged cache
one rebuilds and the others load its result. Under that exclusive lock any temp folder of
the fingerprint is a leftover of a killed build and is removed.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import math
import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from msa_core.atomic import TEMP_SUFFIX, temp_dir_beside, temp_prefix, write_json
from msa_core.checkpoints import TensorReader, read_tensor_index
from msa_core.compatibility import check_compatible
from msa_core.experiment import Experiment
from msa_core.fingerprints import checkpoint_fingerprint
from msa_core.paths import default_cache_dir
from msa_core.progress import Progress, report
from msa_core.safetensors_stream import SafetensorsFile, StreamingSafetensorsWriter

log = logging.getLogger(__name__)

CACHE_VERSION = "1"
VECTOR_KINDS = ("forget", "retain")
# Hash cache files fully only below this size; larger ones are checked by size, header and finiteness.
_FULL_HASH_LIMIT = 2 * 1024**3


@dataclass(frozen=True)
class VectorSet:
    """The forget and retain vectors of an experiment (fp32 CPU tensors, by tensor name)."""

    forget: dict[str, torch.Tensor]
    retain: dict[str, torch.Tensor]
    fingerprint: str
    path: Path
    from_cache: bool
    seconds: float
    # tensor → {"forget": ‖τ_f‖, "retain": ‖τ_r‖, "cosine": cos}
    norms: dict[str, dict[str, float]] = field(default_factory=dict)


def vectors_fingerprint(exp: Experiment) -> str:
    """Hash of the clean, forget and retain checkpoints (the vectors' only inputs)."""
    h = hashlib.sha256(f"msa-vectors-v{CACHE_VERSION};".encode())
    for role in ("clean", "forget", "retain"):
        h.update(f"{role}={checkpoint_fingerprint(getattr(exp.checkpoints, role))};".encode())
    return h.hexdigest()[:16]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _float_names(folder: Path) -> list[tuple[str, tuple[int, ...]]]:
    return [(n, s) for n, (d, s) in read_tensor_index(folder).items() if d.startswith(("float", "bfloat"))]


def _build(exp: Experiment, target: Path, fingerprint: str, progress: Optional[Progress]) -> None:
    """Compute τ_f and τ_r into a temp folder beside ``target`` and rename it into place."""
    specs = _float_names(exp.checkpoints.clean)
    with temp_dir_beside(target) as tmp:
        fp32_specs = [(n, s, torch.float32) for n, s in specs]
        writers = {
            k: StreamingSafetensorsWriter(tmp / f"{k}.safetensors", fp32_specs, {"kind": k, "fingerprint": fingerprint})
            for k in VECTOR_KINDS
        }
        norms: dict[str, dict[str, float]] = {}
        with (
            TensorReader(exp.checkpoints.clean) as clean,
            TensorReader(exp.checkpoints.forget) as forget,
            TensorReader(exp.checkpoints.retain) as retain,
        ):
            for i, (name, _shape) in enumerate(specs):
                inputs = {"clean": clean.get(name), "forget": forget.get(name), "retain": retain.get(name)}
                # Each input is checked on its own so the error names the checkpoint that holds
                # the NaN/Inf (a NaN in θ_clean would otherwise show up in both differences).
                for role, t in inputs.items():
                    if not torch.isfinite(t).all():
                        raise ValueError(
                            f"{role} checkpoint {getattr(exp.checkpoints, role)}: tensor {name} has NaN/Inf values"
                        )
                base = inputs["clean"].to(torch.float32)
                tf = inputs["forget"].to(torch.float32) - base
                tr = inputs["retain"].to(torch.float32) - base
                del inputs
                for kind, t in (("forget", tf), ("retain", tr)):
                    if not torch.isfinite(t).all():
                        raise ValueError(
                            f"{kind} vector tensor {name} overflows float32 (θ_{kind} − θ_clean is not finite "
                            "although both tensors are)"
                        )
                writers["forget"].write(name, tf)
                writers["retain"].write(name, tr)
                nf, nr = float(tf.norm()), float(tr.norm())
                cos = float(torch.dot(tf.flatten(), tr.flatten()) / (nf * nr)) if nf > 0 and nr > 0 else 0.0
                norms[name] = {"forget": nf, "retain": nr, "cosine": cos}
                del base, tf, tr
                report(progress, (i + 1) / len(specs), f"vectors: {name}")
        for w in writers.values():
            w.close()
        files = {}
        for k in VECTOR_KINDS:
            p = tmp / f"{k}.safetensors"
            files[k] = {"size": p.stat().st_size, "sha256": _sha256(p) if p.stat().st_size < _FULL_HASH_LIMIT else None}
        meta = {
            "version": CACHE_VERSION,
            "fingerprint": fingerprint,
            "inputs": {r: str(getattr(exp.checkpoints, r)) for r in ("clean", "forget", "retain")},
            "dtype": "float32",
            "num_tensors": len(specs),
            "files": files,
            "norms": norms,
            "created": time.time(),
        }
        write_json(tmp / "meta.json", meta, indent=1)
        # A damaged cache being replaced is moved aside (one rename) rather than deleted
        # first, so no moment leaves ``target`` half-removed for a concurrent reader.
        with temp_dir_beside(target) as aside:
            if target.exists():
                os.replace(target, aside / "previous")
            os.replace(tmp, target)


def _meta_problem(meta: Any) -> Optional[str]:
    """What is wrong with the structure of a parsed meta.json (None when it is well-formed)."""
    if not isinstance(meta, dict):
        return f"meta.json holds a {type(meta).__name__}, not an object"
    if not isinstance(meta.get("num_tensors"), int):
        return "meta.json field num_tensors is not an integer"
    files = meta.get("files")
    if not isinstance(files, dict):
        return "meta.json field files is not an object"
    for k in VECTOR_KINDS:
        info = files.get(k)
        if not isinstance(info, dict) or not isinstance(info.get("size"), int):
            return f"meta.json field files.{k} lacks an integer size"
        if not isinstance(info.get("sha256"), (str, type(None))):
            return f"meta.json field files.{k}.sha256 is not a string"
    norms = meta.get("norms", {})
    if not isinstance(norms, dict) or not all(
        isinstance(v, dict) and all(isinstance(x, (int, float)) for x in v.values()) for v in norms.values()
    ):
        return "meta.json field norms is not an object of per-tensor numbers"
    return None


def _validate_cache(target: Path, fingerprint: str) -> Optional[dict]:
    """The cache's meta if every file is present and intact, else None (with the reason logged)."""
    meta_path = target / "meta.json"
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError):
        log.warning("vector cache %s: meta.json is corrupt; rebuilding", target)
        return None
    problem = _meta_problem(meta)
    if problem is not None:
        log.warning("vector cache %s: %s; rebuilding", target, problem)
        return None
    if meta.get("fingerprint") != fingerprint or meta.get("version") != CACHE_VERSION:
        log.warning("vector cache %s: fingerprint/version mismatch; rebuilding", target)
        return None
    for k in VECTOR_KINDS:
        p = target / f"{k}.safetensors"
        info = meta["files"][k]
        if not p.is_file() or p.stat().st_size != info.get("size"):
            log.warning("vector cache %s: %s is missing or truncated; rebuilding", target, p.name)
            return None
        if info.get("sha256") and _sha256(p) != info["sha256"]:
            log.warning("vector cache %s: %s content hash mismatch; rebuilding", target, p.name)
            return None
    return meta


def _load(target: Path, meta: dict) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    out: dict[str, dict[str, torch.Tensor]] = {}
    for k in VECTOR_KINDS:
        p = target / f"{k}.safetensors"
        # Positional reads into fresh tensors: no memory map whose pages would double the
        # resident size, and a cache file rewritten later cannot change live vectors.
        with SafetensorsFile(p) as fh:
            tensors = {name: fh.get_tensor(name) for name in fh.keys()}
        if len(tensors) != meta.get("num_tensors"):
            raise ValueError(f"{p}: holds {len(tensors)} tensors, meta.json says {meta.get('num_tensors')}")
        for name, t in tensors.items():
            if not torch.isfinite(t).all():
                raise ValueError(f"{p}: tensor {name} has NaN/Inf values")
        out[k] = tensors
    return out["forget"], out["retain"]


@contextmanager
def _cache_lock(target: Path, *, exclusive: bool) -> Iterator[None]:
    """Hold ``<target>.lock`` (shared to read the cache, exclusive to rebuild it) across processes.

    The lock file is tiny and never removed: removing it could let two processes lock two
    different files of the same name.
    """
    with open(target.parent / f"{target.name}.lock", "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _load_cached(
    target: Path, fingerprint: str
) -> Optional[tuple[dict, dict[str, torch.Tensor], dict[str, torch.Tensor]]]:
    """(meta, τ_f, τ_r) from an intact cache folder, None when it is missing or damaged."""
    meta = _validate_cache(target, fingerprint)
    if meta is None:
        return None
    try:
        return (meta, *_load(target, meta))
    except (ValueError, OSError) as exc:
        log.warning("vector cache %s unusable (%s); rebuilding", target, exc)
        return None


def _remove_stale_temps(target: Path) -> None:
    """Remove temp folders of ``target`` left by a killed build; call only under the exclusive lock
    (then no live build of this fingerprint exists, so every such folder is a leftover)."""
    for tmp in target.parent.glob(f"{temp_prefix(target)}*{TEMP_SUFFIX}"):
        if tmp.is_dir():
            log.info("removing %s, left by an interrupted vector build", tmp)
            shutil.rmtree(tmp, ignore_errors=True)


def compute_vectors(
    exp: Experiment,
    cache_dir: Optional[Path] = None,
    progress: Optional[Progress] = None,
    *,
    check: bool = True,
) -> VectorSet:
    """Load τ_f and τ_r from the cache, or compute and cache them (fp32, streamed).

    Raises ValueError naming the tensor when checkpoints are incompatible or a vector
    has NaN/Inf values.
    """
    t0 = time.perf_counter()
    if check:
        check_compatible(exp)
    fingerprint = vectors_fingerprint(exp)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / "vectors" / fingerprint
    target.parent.mkdir(parents=True, exist_ok=True)
    with _cache_lock(target, exclusive=False):
        loaded = _load_cached(target, fingerprint)
    from_cache = loaded is not None
    if loaded is None:
        with _cache_lock(target, exclusive=True):
            # Another process may have rebuilt the cache while this one waited for the lock.
            loaded = _load_cached(target, fingerprint)
            from_cache = loaded is not None
            if loaded is None:
                _remove_stale_temps(target)
                log.info("computing vectors into %s", target)
                _build(exp, target, fingerprint, progress)
                meta = json.loads((target / "meta.json").read_text())
                loaded = (meta, *_load(target, meta))
    meta, forget, retain = loaded
    if from_cache:
        log.info("vectors loaded from cache %s", target)
        report(progress, 1.0, f"vectors loaded from cache {target}")
    return VectorSet(
        forget=forget,
        retain=retain,
        fingerprint=fingerprint,
        path=target,
        from_cache=from_cache,
        seconds=time.perf_counter() - t0,
        norms=meta.get("norms", {}),
    )


_LAYER_IN_NAME = re.compile(r"(?:^|\.)layers\.(\d+)\.")


@dataclass(frozen=True)
class LayerNorms:
    """‖τ_f‖, ‖τ_r‖ (L2 over one layer's tensors) and cos(τ_f, τ_r) of one layer."""

    layer: str  # 'L0', 'L1', …; 'embed' for tensors before the layers, 'head' for those after
    forget: float
    retain: float
    cosine: float
    tensors: int


def layer_norms(norms: dict[str, dict[str, float]]) -> list[LayerNorms]:
    """Per-layer norms and cosine from the per-tensor ones of :attr:`VectorSet.norms`, in model order.

    Tensors named ``…layers.N.…`` go to layer N; others to 'embed' when their name mentions
    an embedding, else to 'head'. The cosine is Σ cos·‖f‖·‖r‖ / (‖F‖·‖R‖) over the layer's
    tensors, i.e. the cosine of the concatenated vectors; 0.0 when either norm is 0.
    """
    acc: dict[str, list[float]] = {}
    order: dict[str, float] = {}
    for name, n in norms.items():
        m = _LAYER_IN_NAME.search(name)
        if m:
            key, pos = f"L{int(m.group(1))}", float(m.group(1))
        elif "embed" in name:
            key, pos = "embed", -1.0
        else:
            key, pos = "head", float("inf")
        f, r, c = float(n.get("forget", 0.0)), float(n.get("retain", 0.0)), float(n.get("cosine", 0.0))
        a = acc.setdefault(key, [0.0, 0.0, 0.0, 0.0])
        a[0] += f * f
        a[1] += r * r
        a[2] += c * f * r
        a[3] += 1
        order[key] = pos
    rows = []
    for key in sorted(acc, key=lambda k: order[k]):
        f2, r2, dot, count = acc[key]
        nf, nr = math.sqrt(f2), math.sqrt(r2)
        rows.append(LayerNorms(key, nf, nr, dot / (nf * nr) if nf > 0 and nr > 0 else 0.0, int(count)))
    return rows
