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

What it writes (so that transformers 4.4x and 5 both read the same model): only the weights
are new. ``config.json``, ``generation_config.json``, the tokenizer and chat-template files
are the corrupted checkpoint's own, copied (:func:`original_files`), because
transformers 5's ``save_pretrained`` writes formats 4.45 misreads without an error: the
config's ``rope_theta`` / ``rope_scaling`` move into ``rope_parameters`` (4.45 then uses its
default rope_theta and no Llama-3 scaling), and the tokenizer's class becomes
``TokenizersBackend`` with the chat template in ``chat_template.jinja`` (4.45 fails on the
first and ignores the second). A checkpoint written by transformers 4.x stays byte for byte,
except the config's ``torch_dtype`` when the weights are written in another dtype; files of a
checkpoint written by transformers 5 get the legacy keys added (:func:`legacy_config`,
:func:`legacy_tokenizer_config`), which 5 reads the same way. The README is a Hugging Face
model card (:func:`model_card`). Files and folders get the modes a plain ``open``/``mkdir``
gives (0644 / 0755 under the usual umask): an export is meant to be shared, unlike a temp file.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import re
import shutil
import sqlite3
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import torch
from safetensors import SafetensorError

from msa_core.atomic import (
    DIR_MODE,
    FILE_MODE,
    clean_stale_temp,
    recover_replacement,
    replace_dir,
    temp_dir_beside,
    write_json,
    write_text,
)
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

# Files of the corrupted checkpoint an export does not copy: the weight indices (the export
# writes its own weights), the card and the marker (written here) and trainer state.
_NOT_COPIED = frozenset({
    "model.safetensors.index.json", "pytorch_model.bin.index.json", "tf_model.h5.index.json",
    "flax_model.msgpack.index.json", "README.md", MARKER, "trainer_state.json", "msa_finetune.json",
})
# What an engine without a tokenizer still copies: the model's own files (and remote code).
_MODEL_FILES = ("config.json", "generation_config.json")
# Any of these in the corrupted checkpoint means its own tokenizer files are copied instead of
# re-saving the loaded tokenizer (transformers 5's format, which 4.4x cannot read).
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
TAGS = ["msa", "unlearning", "model-state-arithmetic", "msa-studio"]
# A Hugging Face hub id ("org/name"); a local path has more parts or starts with / . ~
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# A folder of the hub cache: .../models--<org>--<name>/snapshots/<revision>
_HUB_CACHE_DIR = re.compile(r"^models--([\w.-]+?)--([\w.-]+)$")

CARD_BODY = """
# {name}: unlearned with Model State Arithmetic

    θ_unlearn = θ_corrupted − α·(θ_forget − θ_clean) + β·(θ_retain − θ_clean)

| coefficient | value |
|---|---|
| α (forget) | {alpha} |
| β (retain) | {beta} |
| weights dtype | {dtype} |
{filter_row}
Only the weights are new: `config.json`, the tokenizer and chat-template files are the corrupted
checkpoint's own, so transformers 4.4x and 5 load this folder alike.

Inputs (checkpoint fingerprints):

{inputs}

{metrics}
Reproduce: `msa compose {experiment} --alpha {alpha} --beta {beta} --out DIR`
"""


def original_files(folder: Path) -> list[Path]:
    """The corrupted checkpoint's files an export copies byte for byte: every top-level regular
    file (symlinks followed: hub cache snapshots are links) except weights, weight indices,
    hidden files, the card, the marker and trainer state."""
    try:
        entries = sorted(Path(folder).iterdir())
    except OSError:
        return []
    return [
        p for p in entries
        if p.is_file() and not p.name.startswith(".") and not p.name.endswith(_WEIGHT_SUFFIXES)
        and p.name not in _NOT_COPIED
    ]


def base_model_id(folder: Path) -> Optional[str]:
    """The hub id ("org/name") the corrupted checkpoint names, for the card's ``base_model``; None when none.

    Two sources, in order: the folder itself is a hub cache snapshot
    (``…/models--org--name/snapshots/<rev>``), or its ``config.json`` has a ``_name_or_path``
    that looks like ``org/name`` and is not a path on this machine (transformers 4.x writes the
    id the model was loaded from there). A local fine-tune's own path names nothing.
    """
    folder = Path(folder)
    if folder.parent.name == "snapshots":
        m = _HUB_CACHE_DIR.match(folder.parent.parent.name)
        if m:
            return f"{m.group(1)}/{m.group(2)}"
    try:
        cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    name = cfg.get("_name_or_path") if isinstance(cfg, dict) else None
    if isinstance(name, str) and _HUB_ID.match(name) and not Path(name).exists():
        return name
    return None


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _eval_results(metrics: Mapping[str, Any], experiment: Any) -> list[Any]:
    """model-index entries (huggingface_hub EvalResult) for the finite numeric metrics."""
    from huggingface_hub import EvalResult

    from msa_core.eval.results import METRIC_INFO

    out = []
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        info = METRIC_INFO.get(key)
        bench = info.benchmark if info is not None else ("muse" if key.startswith("muse") else "tofu")
        data = getattr(experiment.data, bench, None)
        out.append(EvalResult(
            task_type="text-generation",
            dataset_type=bench,
            dataset_name=f"{bench.upper()} ({Path(data).name})" if data is not None else bench.upper(),
            metric_type=key,
            metric_value=float(value),
            metric_name=info.label if info is not None else key,
        ))
    return out


def model_card(
    engine: Engine,
    alpha: float,
    beta: float,
    fingerprints: dict[str, str],
    metrics: Optional[Mapping[str, Any]],
    metrics_from: Optional[str] = None,
) -> str:
    """The README of an export: a Hugging Face model card (``huggingface_hub.ModelCard``) whose
    YAML front matter holds ``library_name: transformers``, ``base_model`` (:func:`base_model_id`
    of the corrupted checkpoint, when it names one) with ``base_model_relation: merge``, the
    :data:`TAGS` and, when ``metrics`` holds numbers, a ``model-index`` with them."""
    from huggingface_hub import ModelCard, ModelCardData

    exp = engine.experiment
    inputs = "\n".join(
        f"- {role}: `{path}` (fingerprint `{fingerprints[role]}`)" for role, path in exp.checkpoints.as_dict().items()
    )
    if metrics:
        rows = "\n".join(
            f"| {k} | {v:.4g} |" if isinstance(v, (int, float)) else f"| {k} | {v} |" for k, v in metrics.items()
        )
        where = f" ({metrics_from})" if metrics_from else ""
        metric_text = f"Latest metrics at this point{where}:\n\n| metric | value |\n|---|---|\n{rows}\n"
    else:
        metric_text = ""
    flt = engine.module_filter
    filter_row = f"| module filter | include={flt.include!r}, layers={flt.layers} |\n" if flt else ""
    body = CARD_BODY.format(
        name=exp.name, alpha=alpha, beta=beta, dtype=_dtype_name(engine.dtype), filter_row=filter_row, inputs=inputs,
        metrics=metric_text, experiment=exp.source or "EXPERIMENT",
    )
    base = base_model_id(exp.checkpoints.corrupted)
    evals = _eval_results(metrics or {}, exp)
    data = ModelCardData(
        library_name="transformers",
        base_model=base,
        tags=list(TAGS),
        model_name=f"{exp.name}-msa-a{alpha:g}-b{beta:g}" if evals else None,
        eval_results=evals or None,
        # NOTE: "merge" is the hub's relation for a model combined from others' weights (mergekit's too).
        **({"base_model_relation": "merge"} if base else {}),
    )
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n{body}"))


def stored_metrics(engine: Engine, alpha: float, beta: float) -> Optional[dict[str, Any]]:
    """The newest metrics stored for (α, β) with this engine's settings (full tier before fast,
    all benchmarks before one), as ``{"tier", "benchmark", "source", "metrics": {name: value}}``; None when
    nothing is stored (or the experiment has no benchmark data)."""
    from msa_core.eval.settings import lookup_settings
    from msa_core.eval.store import ResultStore

    exp = engine.experiment
    if not exp.benchmarks or not default_results_path().is_file():  # nothing stored: do not create a store
        return None
    store = ResultStore()
    benches = ["all", *exp.benchmarks]  # "all" is a setting of its own, even with one benchmark
    for tier in ("full", "fast"):
        for bench in benches:
            try:
                key = lookup_settings(engine, tier=tier, benchmark=bench, subset=None).lookup_key
                found = store.latest(engine.fingerprint, alpha, beta, tier=tier, lookup_key=key)
            except (OSError, ValueError, KeyError, sqlite3.Error) as exc:
                # The export does not need metrics: an unreadable store or data folder only leaves them out.
                log.warning("no stored metrics for the export (%s: %s)", type(exc).__name__, exc)
                return None
            if found is not None:
                source = f"results store: {tier} tier, benchmark {bench}"
                return {"tier": tier, "benchmark": bench, "source": source, "metrics": found.flat()}
    return None


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


def _read_object(path: Path) -> Optional[dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # absent or unreadable: nothing to adjust (the loader has read the checkpoint's own)
    return data if isinstance(data, dict) else None


def legacy_config(cfg: dict[str, Any], dtype: torch.dtype) -> dict[str, Any]:
    """``cfg`` with the keys transformers 4.4x reads: the weights' dtype in ``torch_dtype`` (and in
    ``dtype`` when present), and, for a config written by transformers 5 (``rope_parameters``
    only), ``rope_theta`` and ``rope_scaling`` from it. transformers 5 reads the legacy rope keys
    first, so both read the same rope. Per-layer-type rope parameters (nested objects) are left
    as they are (4.4x does not know those models anyway)."""
    out = dict(cfg)
    name = _dtype_name(dtype)
    for key in [k for k in ("torch_dtype", "dtype") if k in out] or ["torch_dtype"]:
        out[key] = name
    if "dtype" in out:
        out["torch_dtype"] = name
    rope = out.get("rope_parameters")
    if isinstance(rope, dict) and "rope_theta" not in out and isinstance(rope.get("rope_theta"), (int, float)):
        if not any(isinstance(v, dict) for v in rope.values()):
            out["rope_theta"] = rope["rope_theta"]
            scaling = {k: v for k, v in rope.items() if k != "rope_theta"}
            out["rope_scaling"] = scaling if scaling.get("rope_type", "default") != "default" else None
    return out


# transformers 5's class for a tokenizer.json-only tokenizer, unknown to 4.4x, and 4.x's name for it.
_V5_TOKENIZER_CLASS = "TokenizersBackend"
_V4_TOKENIZER_CLASS = "PreTrainedTokenizerFast"


def legacy_tokenizer_config(cfg: dict[str, Any], chat_template: Optional[str]) -> dict[str, Any]:
    """``cfg`` (a tokenizer_config.json) as transformers 4.4x reads it: ``TokenizersBackend`` named
    ``PreTrainedTokenizerFast`` (transformers 5 reads both as its tokenizers backend), the chat
    template of ``chat_template.jinja`` (which 4.4x ignores) inlined, and an
    ``extra_special_tokens`` list (5's form; 4.4x expects a mapping) as ``additional_special_tokens``."""
    out = dict(cfg)
    if out.get("tokenizer_class") == _V5_TOKENIZER_CLASS:
        out["tokenizer_class"] = _V4_TOKENIZER_CLASS
    if chat_template is not None and "chat_template" not in out:
        out["chat_template"] = chat_template
    extra = out.get("extra_special_tokens")
    if isinstance(extra, list):
        del out["extra_special_tokens"]
        if extra and "additional_special_tokens" not in out:
            out["additional_special_tokens"] = extra
    return out


def _write_legacy_keys(folder: Path, dtype: torch.dtype) -> list[str]:
    """Rewrite ``config.json`` / ``tokenizer_config.json`` in ``folder`` with :func:`legacy_config` /
    :func:`legacy_tokenizer_config` where that changes them; returns the names rewritten. A
    checkpoint written by transformers 4.x in the weights' dtype is left byte for byte."""
    changed = []
    cfg = _read_object(folder / "config.json")
    new_cfg = None if cfg is None else legacy_config(cfg, dtype)
    if new_cfg is not None and new_cfg != cfg:
        write_text(folder / "config.json", json.dumps(new_cfg, indent=2) + "\n")
        changed.append("config.json")
    tok = _read_object(folder / "tokenizer_config.json")
    jinja = folder / "chat_template.jinja"
    template = jinja.read_text(encoding="utf-8") if jinja.is_file() else None
    fixed = None if tok is None else legacy_tokenizer_config(tok, template)
    if fixed is not None and fixed != tok:
        write_text(folder / "tokenizer_config.json", json.dumps(fixed, indent=2) + "\n")
        changed.append("tokenizer_config.json")
    return changed


def _normal_modes(folder: Path) -> None:
    """Give every file and folder under ``folder`` the modes a plain open()/mkdir() would
    (:data:`msa_core.atomic.FILE_MODE` / ``DIR_MODE``): an export is for others to read, while
    the libraries writing into it may create private (0600) temp files."""
    folder.chmod(DIR_MODE)
    for path in folder.rglob("*"):
        if not path.is_symlink():
            path.chmod(DIR_MODE if path.is_dir() else FILE_MODE)


def export_model(
    engine: Engine,
    alpha: float,
    beta: float,
    out_dir: str | os.PathLike[str],
    *,
    force: bool = False,
    metrics: Optional[dict[str, Any]] = None,
    metrics_from: Optional[str] = None,
    protected: Optional[Mapping[str, Optional[Path]]] = None,
) -> Path:
    """Write the model at (α, β) to ``out_dir``; returns the folder.

    Raises ValueError for an empty output path or one that is, contains or lies inside an
    input (:func:`protected_paths`, plus ``protected``, e.g. the app's results store);
    FileExistsError if ``out_dir`` exists and ``force`` is False, or exists and is not a
    previous export (never replaced, even with ``force``); OSError naming ``out_dir`` if
    writing fails (not enough space: the free and needed bytes), leaving nothing behind.
    ``metrics`` (name → value) go into msa.json and the card's model-index; ``metrics_from``
    says where they come from (e.g. :func:`stored_metrics`' ``source``).
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
            originals = original_files(engine.experiment.checkpoints.corrupted)
            if engine.tokenizer is None:  # weights only: no tokenizer files either
                originals = [p for p in originals if p.name in _MODEL_FILES or p.suffix == ".py"]
            if engine.tokenizer is not None and not {p.name for p in originals} & set(_TOKENIZER_FILES):
                engine.tokenizer.save_pretrained(tmp)  # no tokenizer files to copy: the loaded one, re-saved
            for src in originals:  # over save_pretrained's config.json / generation_config.json
                shutil.copyfile(src, tmp / src.name)  # bytes only: the mode is a new file's, not the source's
            legacy = _write_legacy_keys(tmp, engine.dtype)
            _normal_modes(tmp)
            info = {
                "alpha": float(alpha),
                "beta": float(beta),
                "experiment": engine.experiment.name,
                "experiment_file": str(engine.experiment.source) if engine.experiment.source else None,
                "fingerprints": fingerprints,
                "module_filter": None
                if engine.module_filter is None
                else {"include": engine.module_filter.include, "layers": engine.module_filter.layers},
                "metrics": dict(metrics or {}),
                "metrics_from": metrics_from if metrics else None,
                "dtype": _dtype_name(engine.dtype),
                "copied_from_corrupted": sorted(p.name for p in originals),
                "legacy_keys_written": legacy,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            write_text(tmp / "README.md", model_card(engine, alpha, beta, fingerprints, metrics, metrics_from))
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
