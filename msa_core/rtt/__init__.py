"""Is it really gone? The relearning attack (RTT, Deeb & Roger, "Do unlearning methods remove
information from language model weights?") against a point (α, β).

Split the forget set into folds by entity, fine-tune a model on all folds but one (the
training code of ``msa finetune``, fp32 master weights) and measure the held-out fold.
A model that never learned the held-out facts cannot recall them from the others; one
that only hid them does. The identical attack runs on the corrupted and the reference
(retain-only) models, so recovery reads as a fraction between them.

- :mod:`.folds` — entity folds of the forget set.
- :mod:`.settings` — :class:`AttackSettings` (folds, epochs, lrs, …; the ``quick`` preset).
- :mod:`.measure` — held-out scores of one model: p(gold), ROUGE-L recall, exact answers.
- :mod:`.attack` — one attack: a fresh fp32 copy of a model, trained on some folds.
- :mod:`.store` — the stored runs (SQLite, beside the results store), resumable.
- :mod:`.run` — :func:`run_rtt`: every model × held-out fold × lr, and the summary.
"""

from msa_core.rtt.folds import Fold, entity_folds
from msa_core.rtt.run import ATTACKED_MODELS, RttReport, load_report, run_rtt
from msa_core.rtt.settings import AttackSettings
from msa_core.rtt.store import RttStore

__all__ = ["ATTACKED_MODELS", "AttackSettings", "Fold", "RttReport", "RttStore", "entity_folds", "load_report",
           "run_rtt"]
