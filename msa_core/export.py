"""Writing the unlearned model at (α, β) as a standalone Hugging Face folder.

The folder holds safetensors weights, the tokenizer, a README model card and, written last,
``msa.json`` (α, β, input fingerprints, metrics): a folder holding it is a complete export,
and only such a folder (or an empty one) is ever replaced, and only with ``force=True``.
The CLI's ``msa compose`` and the app's Export page both call :func:`export_model`.

What it guarantees (RELIABILITY.md, cases 2, 3 and 12):

- the output may not be, contain or lie inside an input checkpoint, the vector cache, the
  results store, the experiment's data or the experiment file (checked before writing);
- the engine lock is held only to copy the weights at (α, β); files are written outside it;
- free space is checked first, and any write failure (a full disk included, whatever library
  reports it) becomes one OSError naming the folder, with nothing left behind;
- the folder is built beside the target and put in place by :func:`msa_core.atomic.replace_dir`:
  an existing export stays at its path until the new one is complete, and a replacement
  interrupted by a kill is restored (or finished) by the next export to that path.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import torch
from safetensors import SafetensorError

from msa_core.atomic import clean_stale_temp, recover_replacement, replace_dir, temp_dir_beside, write_json, write_text
from msa_core.fingerprints import checkpoint_fingerprint
from msa_core.paths import default_results_path, output_collision

if TYPE_CHECKING:
    from msa_core.engine import Engine

log = logging.getLogger(__name__)

# Written last into an export: its presence marks the folder complete and made by this tool.
MARKER = "msa.json"
# Room for what is not weights or tokenizer: config, generation config, README, msa.json.
_SLACK_BYTES = 1 << 20
# Weight files of a checkpoint folder; every other file there counts towards the tokenizer's size.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack", ".ckpt")

CARD = """---
tags: [unlearning, model-state-arithmetic, msa-studio]
---
# {name}: unlearned with Model State Arithmetic

    θ_unlearn = θ_corrupted − α·(θ_forget − θ_clean) + β·(θ_retain − θ_clean)

| coefficient | value |
|---|---|
| α (forget) | {alpha} |
| β (retain) | {beta} |
{filter_row}
Inputs (checkpoint fingerprints):

{inputs}

{metrics}
Reproduce: `msa compose {experiment} --alpha {alpha} --beta {beta} --out DIR`
"""


def _card(
    engine: Engine, alpha: float, beta: float, fingerprints: dict[str, str], metrics: Optional[dict[str, Any]]
) -> str:
    """The README model card of an export (markdown)."""
    inputs = "\n".join(
        f"- {role}: `{path}` (fingerprint `{fingerprints[role]}`)"
        for role, path in engine.experiment.checkpoints.as_dict().items()
    )
    if metrics:
        rows = "\n".join(
            f"| {k} | {v:.4g} |" if isinstance(v, (int, float)) else f"| {k} | {v} |" for k, v in metrics.items()
        )
        metric_text = f"Latest metrics at this point:\n\n| metric | value |\n|---|---|\n{rows}\n"
    else:
        metric_text = ""
    flt = engine.module_filter
    filter_row = f"| module filter | include={flt.include!r}, layers={flt.layers} |\n" if flt else ""
    return CARD.format(
        name=engine.experiment.name,
        alpha=alpha,
        beta=beta,
        filter_row=filter_row,
        inputs=inputs,
        metrics=metric_text,
        experiment=engine.experiment.source or "EXPERIMENT",
    )


def is_export(folder: Path) -> bool:
    """True when ``folder`` is a complete export: it holds a :data:`MARKER` that is a JSON object."""
    try:
        info = json.loads((Path(folder) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(info, dict)


def _may_replace(folder: Path) -> bool:
    # An empty folder loses nothing; anything else must be a previous export.
    return folder.is_dir() and (not any(folder.iterdir()) or is_export(folder))


def protected_paths(engine: Engine) -> dict[str, Optional[Path]]:
    """What an export must never write over, by what it is (see :func:`msa_core.paths.output_collision`)."""
    exp = engine.experiment
    guarded: dict[str, Optional[Path]] = {
        f"the {role} checkpoint": path for role, path in exp.checkpoints.as_dict().items()
    }
    guarded["the vector cache"] = Path(engine.vectors.path).parent
    guarded["the results store"] = default_results_path()
    guarded["the TOFU data folder"] = exp.data.tofu
    guarded["the MUSE data folder"] = exp.data.muse
    guarded["the reference results file"] = exp.reference_eval
    guarded["the experiment file"] = exp.source
    return guarded


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of ``model``'s state dict; tensors that share storage (tied weights) share
    their copy too, so ``save_pretrained`` still sees them as tied and writes one."""
    copies: dict[tuple[Any, ...], torch.Tensor] = {}
    state: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        key = (tensor.device, tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape),
               tuple(tensor.stride()), tensor.dtype)
        if key not in copies:
            copies[key] = tensor.detach().to("cpu", copy=True)
        state[name] = copies[key]
    return state


def _tokenizer_bytes(engine: Engine) -> int:
    if engine.tokenizer is None:
        return 0
    folder = Path(engine.experiment.checkpoints.corrupted)
    try:
        files = [p for p in folder.iterdir() if p.is_file() and not p.name.endswith(_WEIGHT_SUFFIXES)]
    except OSError:
        return 0
    return sum(p.stat().st_size for p in files)


def _needed_bytes(state: Mapping[str, torch.Tensor], engine: Engine) -> int:
    unique = {id(t): t for t in state.values()}.values()
    return sum(t.numel() * t.element_size() for t in unique) + _tokenizer_bytes(engine) + _SLACK_BYTES


def _mb(n: int) -> str:
    return f"{n / 2**20:,.1f} MB"


def _no_space(out: Path, needed: int) -> str:
    free = shutil.disk_usage(out.parent).free
    return (f"exporting to {out} failed: not enough free space on {out.parent} "
            f"({_mb(free)} free, the export needs about {_mb(needed)}); nothing was written")


def _is_write_failure(exc: BaseException) -> bool:
    # NOTE: the tokenizers library reports its I/O errors as a plain ``Exception`` (its Rust
    # errors have no Python type of their own) and safetensors as ``SafetensorError``; both are
    # write failures of the export, as is any OSError. Anything else is a bug and propagates.
    return isinstance(exc, (OSError, SafetensorError)) or type(exc) is Exception


def _is_no_space(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return True
    text = str(exc)
    return "No space left" in text or "os error 28" in text or "StorageFull" in text


def _out_path(out_dir: str | os.PathLike[str]) -> Path:
    raw = os.fspath(out_dir)
    # Path("") is Path("."): an empty field would otherwise export over the current directory.
    if not raw.strip() or Path(raw) == Path("."):
        raise ValueError(f"the output folder is empty or '.' ({raw!r}); give the name of a folder to create")
    return Path(raw).expanduser().resolve()


def export_model(
    engine: Engine,
    alpha: float,
    beta: float,
    out_dir: str | os.PathLike[str],
    *,
    force: bool = False,
    metrics: Optional[dict[str, Any]] = None,
    protected: Optional[Mapping[str, Optional[Path]]] = None,
) -> Path:
    """Write the model at (α, β) to ``out_dir``; returns the folder.

    Raises ValueError for an empty output path or one that is, contains or lies inside an
    input (:func:`protected_paths`, plus ``protected``, e.g. the app's results store);
    FileExistsError if ``out_dir`` exists and ``force`` is False, or exists and is not a
    previous export (never replaced, even with ``force``); OSError naming ``out_dir`` if
    writing fails (not enough space: the free and needed bytes), leaving nothing behind.
    """
    out = _out_path(out_dir)
    guarded = {**protected_paths(engine), **(protected or {})}
    collision = output_collision(out, guarded)
    if collision is not None:
        raise ValueError(f"refusing to export to {out}: {collision}; choose another output folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    recover_replacement(out, is_export)  # logs what it restored or finished
    clean_stale_temp(out)
    if out.exists() or out.is_symlink():
        if not force:
            raise FileExistsError(f"{out} already exists; pass force=True (--force) to overwrite it")
        if not _may_replace(out):
            raise FileExistsError(
                f"{out} exists and is not an MSA export (no {MARKER}); refusing to replace it, even with --force"
            )
    fingerprints = {role: checkpoint_fingerprint(p) for role, p in engine.experiment.checkpoints.as_dict().items()}
    # The lock is held only for the copy: other sessions' moves are served while files are written.
    with engine.session(alpha, beta) as model:
        state = _snapshot(model)
    needed = _needed_bytes(state, engine)
    if shutil.disk_usage(out.parent).free < needed:
        raise OSError(errno.ENOSPC, _no_space(out, needed))
    try:
        # The temp folder is removed on any failure; on success replace_dir has moved it to ``out``.
        with temp_dir_beside(out) as tmp:
            engine.model.save_pretrained(tmp, state_dict=state, safe_serialization=True)
            del state
            if engine.tokenizer is not None:
                engine.tokenizer.save_pretrained(tmp)
            info = {
                "alpha": float(alpha),
                "beta": float(beta),
                "experiment": engine.experiment.name,
                "experiment_file": str(engine.experiment.source) if engine.experiment.source else None,
                "fingerprints": fingerprints,
                "module_filter": None
                if engine.module_filter is None
                else {"include": engine.module_filter.include, "layers": engine.module_filter.layers},
                "metrics": metrics or {},
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            write_text(tmp / "README.md", _card(engine, alpha, beta, fingerprints, metrics))
            write_json(tmp / MARKER, info)  # last: marks the folder complete
            replace_dir(tmp, out, may_replace=lambda p: force and _may_replace(p), is_complete=is_export)
    except FileExistsError:
        raise
    except Exception as exc:  # noqa: BLE001 - narrowed by _is_write_failure; anything else is re-raised
        if not _is_write_failure(exc):
            raise
        if _is_no_space(exc):
            raise OSError(errno.ENOSPC, _no_space(out, needed)) from exc
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        code = exc.errno if isinstance(exc, OSError) else errno.EIO
        raise OSError(code, f"exporting to {out} failed: {reason}; nothing was written") from exc
    return out
