"""Writing the unlearned model at (α, β) as a standalone Hugging Face folder.

The folder holds safetensors weights, the tokenizer, ``msa.json`` (α, β, input
fingerprints, metrics) and a README model card. It is written into a temp folder beside
the target (:func:`msa_core.atomic.temp_dir_beside`) and renamed into place, so a failure
(a full disk, say) leaves no half folder and never touches an existing one; an existing
target is replaced only with ``force=True``. The CLI's ``msa compose`` and the app's Export page both call
:func:`export_model`.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from msa_core.atomic import temp_dir_beside
from msa_core.checkpoints import checkpoint_fingerprint

if TYPE_CHECKING:
    from msa_core.engine import Engine

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


def export_model(
    engine: Engine,
    alpha: float,
    beta: float,
    out_dir: Path,
    *,
    force: bool = False,
    metrics: Optional[dict[str, Any]] = None,
) -> Path:
    """Write the model at (α, β) to ``out_dir``; returns the folder.

    Raises FileExistsError if ``out_dir`` exists and ``force`` is False, and OSError
    naming ``out_dir`` if writing fails (the temp folder is removed, nothing else changes).
    """
    out = Path(out_dir).expanduser().resolve()
    if out.exists() and not force:
        raise FileExistsError(f"{out} already exists; pass force=True (--force) to overwrite it")
    out.parent.mkdir(parents=True, exist_ok=True)
    fingerprints = {role: checkpoint_fingerprint(p) for role, p in engine.experiment.checkpoints.as_dict().items()}
    try:
        # The temp folder is removed on any failure; on success it has been renamed to ``out``.
        with temp_dir_beside(out) as tmp:
            with engine.session(alpha, beta) as model:
                model.save_pretrained(tmp, safe_serialization=True)
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
            (tmp / "msa.json").write_text(json.dumps(info, indent=2))
            (tmp / "README.md").write_text(_card(engine, alpha, beta, fingerprints, metrics))
            if out.exists():
                # NOTE: replace-by-rename (old copy moved aside, then deleted); a reliability issue
                # is to rework it so the old copy survives until the new one is in place.
                old = out.with_name(f".{out.name}.old-{os.getpid()}")
                os.replace(out, old)
                os.replace(tmp, out)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, out)
    except OSError as exc:
        raise OSError(exc.errno, f"exporting to {out} failed: {exc.strerror or exc}") from exc
    return out
