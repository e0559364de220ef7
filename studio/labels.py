"""Words and numbers as MSA Studio shows them: metric labels that say which direction is better
(and tooltips linking each metric to the Glossary page), markdown escaping of model output,
byte and time formats, and the ``msa`` command lines that reproduce a view. Pure functions
(no Streamlit calls), shared by the pages and charts.
"""

from __future__ import annotations

import re
from typing import Any, Optional

from msa_core.eval.results import METRIC_INFO, MetricInfo
from studio import glossary

# The metrics shown as tiles (first six present), in this order; the rest go to a table.
HEADLINE = ("forget_quality", "model_utility", "model_utility_tf", "forget_truth_ratio", "forget_prob",
            "retain_prob", "extraction_strength", "muse_privleak")

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>$~:])")


def md_escape(text: str) -> str:
    """Model output shown literally in st.markdown (no emphasis, links, LaTeX or emoji codes)."""
    return _MD_SPECIAL.sub(r"\\\1", text).replace("\n", "  \n")


def fmt_bytes(n: float) -> str:
    """Bytes in human units."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def fmt_seconds(s: float) -> str:
    """Seconds in ms or s."""
    return f"{s * 1000:.0f} ms" if s < 1 else f"{s:.2f} s"


def metric_info(name: str) -> Optional[MetricInfo]:
    """The eval package's MetricInfo for ``name`` (None for a metric it does not describe)."""
    return METRIC_INFO.get(name)


def direction_text(name: str) -> str:
    """'higher is better (ideal 1)', 'closer to 0 is better', ... ('' when unknown)."""
    info = metric_info(name)
    return info.direction_text() if info is not None else ""


def arrow(name: str) -> str:
    """↑ (higher is better), ↓ (lower is better) or → (closer to a target is better)."""
    info = metric_info(name)
    if info is None:
        return ""
    return {"higher": "↑", "lower": "↓"}.get(info.direction, "→")


def metric_label(name: str, with_direction: bool = True) -> str:
    """A metric's label, with its better direction, e.g. 'Model utility (↑ higher is better (ideal 1))'."""
    info = metric_info(name)
    label = info.label if info is not None else name
    if not with_direction or info is None:
        return label
    return f"{label} ({arrow(name)} {direction_text(name)})"


def metric_help(name: str) -> str:
    """A metric label's tooltip (markdown): its definition, which direction is better, where it
    comes from and a link to its Glossary entry ('' for a metric METRIC_INFO does not describe)."""
    info = metric_info(name)
    if info is None:
        return ""
    ref = glossary.REFERENCES.get(name)
    source = f" Source: {ref.text}." if ref is not None else ""
    return (f"{md_escape(info.description)} **Better:** {info.direction_text()}.{source} "
            f"[Glossary ↗]({glossary.link(name)})")


def glossary_url(name: str) -> Optional[str]:
    """The relative URL of a metric's Glossary entry (None for a metric the glossary does not hold)."""
    return glossary.link(name) if name in glossary.REFERENCES else None


def delta_color(name: str) -> str:
    """st.metric's delta_color so that green always means 'better'."""
    info = metric_info(name)
    if info is None:
        return "off"
    return {"higher": "normal", "lower": "inverse"}.get(info.direction, "off")


def eval_cli_lines(src: str, alpha: float, beta: float, metrics: Optional[dict[str, Any]] = None) -> list[str]:
    """The ``msa`` evaluation commands that reproduce the metrics of this view (same tier,
    benchmark and subset as ``metrics``, an EvalResult JSON, when given)."""
    base = f"msa eval {src} --alpha {alpha:g} --beta {beta:g}"
    if metrics:
        subset = (metrics.get("settings") or {}).get("subset")
        line = f"{base} --tier {metrics.get('tier', 'fast')} --benchmark {metrics.get('benchmark', 'all')}"
        lines = [line + (f" --subset {subset}" if subset else "") + " --json -"]
    else:
        lines = [f"{base} --tier fast --json -"]
    return lines + [f"{base} --tier full --json -", f"msa results {src}"]


def candidate_label(label: str, step: Optional[float] = None, before_forget: Optional[bool] = None) -> str:
    """A θ_clean candidate as the picker shows it, e.g. 'pretrain-e10 · step 10 · before forget data'
    (the default: 'default (the experiment's checkpoints)')."""
    parts = ["default (the experiment's checkpoints)" if label == "default" else label]
    if step is not None:
        parts.append(f"step {step:g}")
    if before_forget is not None:
        parts.append("before forget data" if before_forget else "after forget data")
    return " · ".join(parts)


def epoch_label(epoch: Optional[int]) -> str:
    """An e_f / e_r option: 'final' (the fine-tune folder itself) or 'epoch K'."""
    return "final" if epoch is None else f"epoch {epoch}"
