"""msa_core.log_setup: rouge_score's absl INFO lines are dropped; warnings and our own INFO stay."""

from __future__ import annotations

import subprocess
import sys

# In a fresh interpreter: the root logger's handlers are process-wide (pytest installs its own).
CODE = """
import logging
from msa_core.log_setup import configure_logging
configure_logging(logging.INFO, "%(levelname)s %(name)s: %(message)s")
configure_logging(logging.INFO, "%(levelname)s %(name)s: %(message)s")  # idempotent: one filter
from msa_core.eval.metrics import rouge_l_recall, rouge_fields
rouge_l_recall("Ana Lenz was born in Velmora.", "She was born in Velmora.")
rouge_fields("Ana Lenz was born in Velmora.", "She was born in Velmora.")
import absl.logging
absl.logging.info("absl info")
absl.logging.warning("absl warning")
logging.getLogger("msa_core.demo").info("our info")
print(sum(len(h.filters) for h in logging.getLogger().handlers))
"""


def test_absl_info_is_dropped_and_the_rest_is_kept():
    done = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "1"
    assert "Using default tokenizer" not in done.stderr and "absl info" not in done.stderr
    assert "WARNING absl: absl warning" in done.stderr and "INFO msa_core.demo: our info" in done.stderr


def test_without_the_filter_rouge_score_is_noisy():
    """The control: the same calls with a plain basicConfig print absl's INFO line."""
    plain = CODE.replace("from msa_core.log_setup import configure_logging\n", "").replace(
        'configure_logging(logging.INFO, "%(levelname)s %(name)s: %(message)s")',
        'logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")')
    done = subprocess.run([sys.executable, "-c", plain], capture_output=True, text=True, timeout=120, check=True)
    assert "INFO absl: Using default tokenizer." in done.stderr
