"""The embedded demo: a complete MSA experiment built on the CPU from generated data, no download.

- :mod:`msa_core.demo.data`: the seeded generator of fictitious authors (TOFU/MUSE format);
- :mod:`msa_core.demo.build`: the recipes, the training of the five tiny models and the
  experiment folder (:func:`build_demo`);
- :mod:`msa_core.demo.report`: greedy-answer ROUGE-L measurement of the built demo through
  the engine (:func:`measure_demo`), its TOFU truth ratios (:func:`truth_ratio_rows`) and the
  paper's comparisons on it (:func:`measure_comparison`, :func:`comparison_table`).
"""

from msa_core.demo.build import build_demo, is_built
from msa_core.demo.report import (
    comparison_table,
    measure_comparison,
    measure_demo,
    measure_table,
    truth_ratio_rows,
    truth_ratio_table,
)

__all__ = [
    "build_demo", "comparison_table", "is_built", "measure_comparison", "measure_demo", "measure_table",
    "truth_ratio_rows", "truth_ratio_table",
]
