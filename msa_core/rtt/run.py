"""``run_rtt``: the relearning attack on the unlearned model at (α, β), the corrupted model and the
reference model — every held-out fold × lr — and the summary that reads it as recovery.

Recovery of a metric m (p(gold), ROUGE-L recall, exact answers) on the held-out folds, each
model attacked at its best lr for m (the lr with the highest held-out m: the attack's strength):

    recovery = (m_model − m_reference) / (m_corrupted − m_reference)

0 % = what the same attack gives a model that never learned the facts (the reference),
100 % = what it gives the corrupted model, which knew them; so the endpoints read 0 % and
100 % by construction, and the unattacked values (lr 0) show what the attack itself added.
None when the corrupted and reference models are within :data:`MIN_SPAN` of each other
(nothing to recover on this data).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

from msa_core.progress import Progress, report
from msa_core.rtt.attack import attack, fresh_copy
from msa_core.rtt.folds import Fold, entity_folds
from msa_core.rtt.measure import METRICS, ItemScores, score_items
from msa_core.rtt.settings import AttackSettings
from msa_core.rtt.store import RttStore, StoredRun, coefficient_key, settings_key
from msa_core.targets import Point, Side, Target

if TYPE_CHECKING:
    from msa_core.engine import Engine

# The attacked models, in run order: the two endpoints first, so a point's recovery can be
# read as soon as its own runs finish (and the endpoints are shared by every point).
ATTACKED_MODELS = ("corrupted", "reference", "unlearned")
# Below this gap between the corrupted and the reference model a recovery fraction is noise.
MIN_SPAN = 1e-3


def forget_items(engine: Engine) -> list[Any]:
    """The experiment's forget set (QAItem rows); ValueError naming the data folder when absent."""
    from msa_core.eval.questions import load_question_sets

    loaded = load_question_sets(engine.experiment.data)
    items = loaded.sets.get("forget")
    if not items:
        why = "; ".join(loaded.problems) or "no TOFU data in the experiment"
        raise ValueError(f"experiment {engine.experiment.name!r}: no forget set to attack ({why})")
    return items


def _data_signature(items: Sequence[Any]) -> str:
    h = hashlib.sha256(b"msa-rtt-forget-v1;")
    h.update(json.dumps([[it.question, it.answer] for it in items], ensure_ascii=False).encode())
    return h.hexdigest()[:16]


def run_key(engine: Engine, items: Sequence[Any], settings: AttackSettings, folds: Sequence[Fold]) -> str:
    """The store key of an attack: its settings, the engine's model settings (dtype, device,
    module filter), the forget data's content, the prompt format and the fold assignment."""
    return settings_key({"attack": settings.key(), "model": engine.model_settings, "data": _data_signature(items),
                         "prompt_format": engine.experiment.prompt_format, "folds": [list(f.items) for f in folds]})


def _target(model: str, point: Point) -> Target:
    return point if model == "unlearned" else Side(model)


@dataclass
class RttReport:
    """The runs of one attack on (corrupted, reference, unlearned at α, β) and their summary."""

    alpha: float
    beta: float
    runs: list[StoredRun]
    settings: Optional[AttackSettings] = None
    folds: list[Fold] = field(default_factory=list)
    key: str = ""
    computed: int = 0  # runs computed by this call (the others came from the store)
    seconds: float = 0.0  # wall time of this call

    def _shared(self) -> set[tuple[int, float]]:
        """(fold, lr) pairs stored for every attacked model present."""
        per_model: dict[str, set[tuple[int, float]]] = {}
        for r in self.runs:
            per_model.setdefault(r.model, set()).add((r.fold, r.lr))
        sets = list(per_model.values())
        return set.intersection(*sets) if sets else set()

    def models(self) -> list[str]:
        """The attacked models with runs, in :data:`ATTACKED_MODELS` order."""
        have = {r.model for r in self.runs}
        return [m for m in ATTACKED_MODELS if m in have]

    def pooled(self, model: str, lr: float) -> Optional[ItemScores]:
        """The model's held-out scores at ``lr`` (0: unattacked), pooled over the held-out folds
        shared by every model; None when there are none."""
        shared = self._shared()
        parts = [r.scores for r in self.runs if r.model == model and r.lr == lr and (r.fold, r.lr) in shared]
        if not parts:
            return None
        return ItemScores([i for p in parts for i in p.items], [x for p in parts for x in p.p_gold],
                          [x for p in parts for x in p.rouge], [x for p in parts for x in p.exact],
                          [a for p in parts for a in p.answers])

    def lrs(self) -> list[float]:
        """Attack learning rates present for every model (lr 0, the unattacked model, excluded)."""
        return sorted({lr for _, lr in self._shared() if lr > 0})

    def sweep(self) -> list[dict[str, Any]]:
        """One row per (model, lr), lr 0 first: mean p(gold), ROUGE-L recall and exact answers, items, seconds."""
        rows = []
        shared = self._shared()
        for model in self.models():
            for lr in [0.0] + self.lrs():
                scores = self.pooled(model, lr)
                if scores is None:
                    continue
                secs = sum(r.seconds for r in self.runs if r.model == model and r.lr == lr and (r.fold, lr) in shared)
                rows.append({"model": model, "lr": lr, **{m: scores.mean(m) for m in METRICS},
                             "items": len(scores.items), "seconds": round(secs, 3)})
        return rows

    def best(self, metric: str = "p_gold") -> dict[str, dict[str, Any]]:
        """Per model, the sweep row of its best lr for ``metric`` (the highest held-out value: the
        strongest attack on that metric)."""
        out: dict[str, dict[str, Any]] = {}
        for row in self.sweep():
            if row["lr"] > 0 and (row["model"] not in out or row[metric] > out[row["model"]][metric]):
                out[row["model"]] = row
        return out

    def best_lrs(self) -> dict[str, dict[str, float]]:
        """Per model and metric, the lr of :meth:`best`."""
        out: dict[str, dict[str, float]] = {}
        for m in METRICS:
            for model, row in self.best(m).items():
                out.setdefault(model, {})[m] = row["lr"]
        return out

    def before(self) -> dict[str, dict[str, Any]]:
        """Per model, the unattacked sweep row (lr 0)."""
        return {row["model"]: row for row in self.sweep() if row["lr"] == 0}

    def _fractions(self, values: dict[str, dict[str, Any]], metric: str) -> dict[str, Optional[float]]:
        best = self.best(metric)
        if "corrupted" not in best or "reference" not in best:
            return {}
        lo, hi = best["reference"][metric], best["corrupted"][metric]
        return {model: (row[metric] - lo) / (hi - lo) if abs(hi - lo) >= MIN_SPAN else None
                for model, row in values.items()}

    def recovery(self) -> dict[str, dict[str, Optional[float]]]:
        """Per model and metric, the recovery fraction, each model attacked at its best lr for that
        metric (module docstring); {} until the corrupted and reference models have runs."""
        out: dict[str, dict[str, Optional[float]]] = {}
        for m in METRICS:
            for model, frac in self._fractions(self.best(m), m).items():
                out.setdefault(model, {})[m] = frac
        return out

    def recovery_before(self) -> dict[str, dict[str, Optional[float]]]:
        """Per model and metric, the same fraction for the unattacked model (lr 0) against the same
        attacked endpoints: what was there before the attack."""
        out: dict[str, dict[str, Optional[float]]] = {}
        for m in METRICS:
            for model, frac in self._fractions(self.before(), m).items():
                out.setdefault(model, {})[m] = frac
        return out

    def complete(self) -> bool:
        """Whether every attacked model has runs on the same held-out folds and lrs."""
        return self.models() == list(ATTACKED_MODELS) and bool(self.lrs())

    def to_json(self) -> dict[str, Any]:
        def clean(x: Any) -> Any:
            return None if isinstance(x, float) and not math.isfinite(x) else x

        return {
            "alpha": self.alpha, "beta": self.beta, "key": self.key,
            "settings": None if self.settings is None else {**self.settings.key()["settings"],
                                                            "lrs": list(self.settings.lrs or ())},
            "folds": [{"index": f.index, "entities": list(f.entities), "items": list(f.items)} for f in self.folds],
            "held_out": sorted({r.fold for r in self.runs}),
            "sweep": [{k: clean(v) for k, v in row.items()} for row in self.sweep()],
            "best_lr": self.best_lrs(),
            "recovery": self.recovery(),
            "recovery_before_attack": self.recovery_before(), "computed": self.computed,
            "seconds": round(self.seconds, 3),
        }


def run_rtt(
    engine: Engine,
    point: Point,
    settings: AttackSettings,
    *,
    store: Optional[RttStore] = None,
    models: Sequence[str] = ATTACKED_MODELS,
    held_out: Optional[Sequence[int]] = None,
    progress: Optional[Progress] = None,
) -> RttReport:
    """Attack each of ``models`` on every held-out fold at every lr (see the module docstring).

    The held-out folds are ``held_out`` (fold indices) when given, else the first
    ``settings.rounds`` folds (all when None).
    Runs already in ``store`` are read, not recomputed; each new run is stored as soon as it is
    done (a killed call resumes). Without a store everything is computed. KeyError when the
    experiment has no reference model and it is asked for; ValueError for a forget set of one entity.
    """
    started = time.perf_counter()
    unknown = [m for m in models if m not in ATTACKED_MODELS]
    if unknown:
        raise ValueError(f"unknown attacked model(s) {unknown}; expected some of {ATTACKED_MODELS}")
    if "reference" in models and engine.experiment.checkpoints.reference is None:
        raise KeyError(f"experiment {engine.experiment.name!r} has no reference checkpoint: the relearning attack "
                       "measures recovery against it (add checkpoints.reference)")
    engine.experiment.validate_coefficients(point.alpha, point.beta)
    settings = settings.resolved(engine.parameter_count)
    items = forget_items(engine)
    folds = entity_folds(items, settings.folds)
    if held_out is not None:
        bad = [f for f in held_out if not 0 <= f < len(folds)]
        if bad or not held_out:
            raise ValueError(f"held-out folds {list(held_out)}: the forget set has folds 0–{len(folds) - 1}")
        rounds = [folds[f] for f in sorted(set(held_out))]
    else:
        rounds = folds[: settings.rounds] if settings.rounds is not None else folds
    key = run_key(engine, items, settings, folds)
    lrs = [0.0] + [coefficient_key(lr) for lr in settings.lrs or ()]  # as the store keys them
    todo = [(m, f, lr) for m in models for f in rounds for lr in lrs]
    runs: list[StoredRun] = []
    computed = 0
    for n, (model, fold, lr) in enumerate(todo):
        alpha, beta = (point.alpha, point.beta) if model == "unlearned" else (0.0, 0.0)
        stored = store.get(engine.fingerprint, key, model, alpha, beta, fold.index, lr) if store else None
        if stored is not None:
            runs.append(stored)
            continue
        label = f"{model} fold {fold.index + 1}/{len(folds)} " + (f"lr {lr:g}" if lr else "unattacked")
        report(progress, n / len(todo), label)
        t0 = time.perf_counter()
        copy = fresh_copy(engine, _target(model, point))
        losses: tuple[float, ...] = ()
        if lr > 0:
            train = [i for f in folds if f.index != fold.index for i in f.items]
            losses = attack(copy, engine, items, train, lr, settings, label=label).epoch_losses
        scores = score_items(copy, engine.tokenizer, items, fold.items, max_new_tokens=settings.max_new_tokens,
                             prompt_format=engine.experiment.prompt_format)
        del copy
        run = StoredRun(model, alpha, beta, fold.index, lr, scores, losses, time.perf_counter() - t0)
        if store is not None:
            store.put(engine.fingerprint, key, run)
        runs.append(run)
        computed += 1
    report(progress, 1.0, f"relearning attack done ({computed} run(s) computed, {len(todo) - computed} stored)")
    return RttReport(point.alpha, point.beta, runs, settings, folds, key, computed, time.perf_counter() - started)


def load_report(engine: Engine, point: Point, settings: AttackSettings, store: RttStore) -> RttReport:
    """The stored runs of this attack (nothing computed; runs missing from the store are absent)."""
    settings = settings.resolved(engine.parameter_count)
    items = forget_items(engine)
    folds = entity_folds(items, settings.folds)
    key = run_key(engine, items, settings, folds)
    here = (coefficient_key(point.alpha), coefficient_key(point.beta))
    lrs = {0.0, *(coefficient_key(lr) for lr in settings.lrs or ())}
    runs = [r for r in store.runs(engine.fingerprint, key)
            if r.lr in lrs and (r.model != "unlearned" or (r.alpha, r.beta) == here)]
    return RttReport(point.alpha, point.beta, runs, settings, folds, key)


def stored_reports(engine: Engine, store: RttStore) -> list[RttReport]:
    """One report per stored (settings, α, β) of this engine's experiment (any settings)."""
    out = []
    for key, alpha, beta in store.keys(engine.fingerprint):
        runs = [r for r in store.runs(engine.fingerprint, key)
                if r.model != "unlearned" or (r.alpha, r.beta) == (alpha, beta)]
        out.append(RttReport(alpha, beta, runs, key=key))
    return out
