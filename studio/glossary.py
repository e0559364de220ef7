"""The in-app glossary: what every metric means and where it comes from (pure data, no Streamlit calls).

Definitions, directions and ideal values come from :data:`msa_core.eval.results.METRIC_INFO`
(the one source of truth); this module adds the reference each metric comes from
(:data:`REFERENCES`, one entry per METRIC_INFO key, checked by a test) and the terms of the
layer view, which are not evaluation metrics. The Glossary page (``pages/glossary.py``)
draws :func:`entries`; :func:`studio.labels.metric_help` links every metric label to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from msa_core.eval.results import METRIC_INFO, METRIC_ORDER

# The Glossary page's URL path (st.Page derives it from pages/glossary.py).
PAGE_PATH = "glossary"


@dataclass(frozen=True)
class Reference:
    """Where a metric comes from: a short citation and a link to the paper or code."""

    text: str
    url: str


_TOFU = Reference("TOFU — Maini et al. 2024, “TOFU: A Task of Fictitious Unlearning for LLMs” (§2.5)",
                  "https://arxiv.org/abs/2401.06121")
_TOFU_ROUGE = Reference("TOFU (Maini et al. 2024, §2.5) with ROUGE-L recall (Lin 2004)",
                        "https://arxiv.org/abs/2401.06121")
_MUSE = Reference("MUSE — Shi et al. 2024, “MUSE: Machine Unlearning Six-Way Evaluation for Language Models”",
                  "https://arxiv.org/abs/2407.06460")
_OU = "https://github.com/locuslab/open-unlearning/blob/main/docs/links.md"

REFERENCES: dict[str, Reference] = {
    "forget_quality": _TOFU,
    "model_utility": _TOFU,
    "model_utility_tf": Reference("MSA Studio's fast-tier stand-in for TOFU's model utility (Maini et al. 2024, "
                                  "§2.5) without its 3 ROUGE parts", "https://arxiv.org/abs/2401.06121"),
    "forget_truth_ratio": _TOFU,
    "forget_prob": _TOFU,
    "forget_para_prob": _TOFU,
    "forget_pert_prob": _TOFU,
    "forget_rouge": _TOFU_ROUGE,
    "retain_prob": _TOFU,
    "retain_rouge": _TOFU_ROUGE,
    "retain_truth_ratio": _TOFU,
    "ra_prob": _TOFU,
    "ra_rouge": _TOFU_ROUGE,
    "ra_truth_ratio": _TOFU,
    "wf_prob": _TOFU,
    "wf_rouge": _TOFU_ROUGE,
    "wf_truth_ratio": _TOFU,
    "extraction_strength": Reference("Carlini et al. 2021 (USENIX Security), used for unlearning by Wang et al. "
                                     "2025 (ICLR); as implemented in open-unlearning", _OU),
    "exact_memorization": Reference("Tirumala et al. 2022 (NeurIPS), used for unlearning by Wang et al. 2025 "
                                    "(ICLR); as implemented in open-unlearning", _OU),
    "muse_verbmem_forget": _MUSE,
    "muse_knowmem_forget": _MUSE,
    "muse_knowmem_retain": _MUSE,
    "muse_mink_auc": Reference("Min-K% Prob — Shi et al. 2024, “Detecting Pretraining Data from Large Language "
                               "Models” (ICLR), as used by MUSE", "https://arxiv.org/abs/2310.16789"),
    "muse_minkpp_auc": Reference("Min-K%++ — Zhang et al. 2024, “Min-K%++: Improved Baseline for Detecting "
                                 "Pre-Training Data from Large Language Models”", "https://arxiv.org/abs/2404.02936"),
    "muse_privleak": _MUSE,
    "tofu_mink_auc": Reference("Min-K% Prob (Shi et al. 2024, ICLR) on TOFU forget vs holdout answers, as "
                               "open-unlearning's mia_min_k", _OU),
    "tofu_privleak": Reference("PrivLeak of MUSE (Shi et al. 2024) on TOFU forget vs holdout, as in "
                               "open-unlearning", "https://arxiv.org/abs/2407.06460"),
}


@dataclass(frozen=True)
class Entry:
    """One glossary entry: a metric (or a layer-view term) as the Glossary page shows it."""

    name: str
    label: str
    definition: str
    better: str  # "higher is better", "closer to 0.5 is better", …
    ideal: str  # "1", "0.5", or "the reference model's value"
    where: str  # which tier / benchmark computes it
    reference: Reference


_BETTER = {"higher": "higher is better", "lower": "lower is better", "closer_to_1": "closer to 1 is better",
           "closer_to_0": "closer to 0 is better"}


def _ideal_text(ideal: Optional[float]) -> str:
    return "the reference (retain-only) model's value" if ideal is None else f"{ideal:g}"


def metric_entry(name: str) -> Entry:
    """The glossary entry of a metric of METRIC_INFO; KeyError naming it when it has no reference here."""
    info = METRIC_INFO[name]
    if name not in REFERENCES:
        raise KeyError(f"studio/glossary.py: metric {name!r} of METRIC_INFO has no entry in REFERENCES")
    tier = "fast tier (teacher-forced)" if info.tier == "fast" else "full tier (needs generation)"
    better = _BETTER.get(info.direction, f"closer to {_ideal_text(info.ideal)} is better")
    return Entry(name, info.label, info.description, better, _ideal_text(info.ideal),
                 f"{info.benchmark.upper()}, {tier}", REFERENCES[name])


LAYER_TERMS: tuple[Entry, ...] = (
    Entry("relative_l2", "Relative L2 distance (per layer)",
          "‖θ_a − θ_b‖ / ‖θ_b‖ over the layer's weight tensors taken together: how far one model's weights are "
          "from another's, as a fraction of the other's size.",
          "closer to 0 = the weights of that layer are the same",
          "0 against the reference model", "Layers page, per layer", Reference(
              "MSA Studio's layer view (msa_core/layers.py), after the layer-level views of Unlearning "
              "Comparator (arXiv 2508.12730)", "https://arxiv.org/abs/2508.12730")),
    Entry("linear_cka", "Linear CKA (per layer)",
          "Centred kernel alignment of two models' hidden states on the same tokens (a handful of forget or "
          "retain QA texts): 1 = the same representation up to a rotation and a scale, 0 = unrelated.",
          "on forget texts, lower against the corrupted model = more changed; on retain texts, 1 is ideal",
          "1 against the reference model", "Layers page, per layer", Reference(
              "Kornblith et al. 2019, “Similarity of Neural Network Representations Revisited” (ICML)",
              "https://arxiv.org/abs/1905.00414")),
)


def entries() -> list[Entry]:
    """Every metric of METRIC_INFO (in METRIC_ORDER), then the layer-view terms."""
    return [metric_entry(name) for name in METRIC_ORDER] + list(LAYER_TERMS)


def link(name: str) -> str:
    """The relative URL of a metric's glossary entry (``glossary#<name>``)."""
    return f"{PAGE_PATH}#{name}"
