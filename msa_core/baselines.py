"""Gradient-based unlearning baselines (GradAscent, GradDiff, NPO) on an experiment, as named points.

:func:`run_baseline` unlearns θ_corrupted with the method's loss (open-unlearning's definitions,
:mod:`msa_core.finetune.trainer`) through the training path of ``msa finetune``
(:func:`msa_core.finetune.train.train_folder`: fp32 master weights, resume, atomic output with a
card, reuse by key), on paired forget/retain batches (:mod:`msa_core.finetune.unlearn_data`),
keeping every epoch (``OUT/epoch-K``). It then evaluates each epoch's model exactly as a composed
point of the same experiment is evaluated at that tier — the same reference statistics
(:func:`msa_core.eval.run.resolve_reference` on the experiment's engine), the same data, prompt
format, dtype and device — and stores it in the results store as the named point
``method_model(method, "epoch-K")`` under the experiment fingerprint.

Reuse: the training folder is reused when its card's key matches (method, its parameters,
the TrainConfig, the data signatures, the base checkpoint's content fingerprint, the prompt
format, the pairing seed); an epoch point already stored under the same settings is not
evaluated again. The stored settings add ``baseline`` (the training key's hash, method and
parameters) to the evaluation settings, so runs of other hyper-parameters are other rows, and
``source`` (the training folder), which :meth:`ResultStore.method_grid` shows.

Default training settings (:data:`BASELINE_CONFIG`) are open-unlearning's TOFU unlearning
trainer defaults: 10 epochs, lr 1e-5, batch 8 × 4 accumulation (32), no warm-up, no weight decay,
linear schedule, seed 0.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from msa_core.finetune.train import TrainConfig
from msa_core.progress import Progress, report, sub_progress

if TYPE_CHECKING:
    from msa_core.eval.results import EvalResult
    from msa_core.eval.store import ResultStore
    from msa_core.experiment import Experiment
    from msa_core.finetune.data import TrainingData

log = logging.getLogger(__name__)

BASELINE_METHODS = ("GradAscent", "GradDiff", "NPO")
BASELINE_FORMAT = "msa-baseline-1"
# open-unlearning's configs/trainer/finetune.yaml (which its unlearning trainers inherit).
BASELINE_CONFIG = TrainConfig(epochs=10, lr=1e-5, batch_size=8, grad_accum=4, weight_decay=0.0,
                              warmup_epochs=0.0, scheduler="linear", seed=0)


@dataclass
class BaselineResult:
    """What :func:`run_baseline` did: the training folder and its epoch folders, whether it
    trained (False: reused), the training seconds of this call, the training key's hash and the
    TrainConfig used (objective and save_every_epoch set), every epoch's stored point
    (``points``, epoch order), which of them this call evaluated (``evaluated``) and which were
    already stored (``reused_points``), and the whole call's seconds."""

    method: str
    out: Path
    epoch_dirs: list[Path]
    trained: bool
    train_seconds: float
    key_hash: str
    config: TrainConfig
    points: list[EvalResult] = field(default_factory=list)
    evaluated: list[str] = field(default_factory=list)
    reused_points: list[str] = field(default_factory=list)
    seconds: float = 0.0


def check_method(method: str) -> str:
    """``method`` if it is one of :data:`BASELINE_METHODS` (ValueError listing them otherwise)."""
    if method not in BASELINE_METHODS:
        raise ValueError(f"unknown baseline method {method!r}; expected one of {', '.join(BASELINE_METHODS)}")
    return method


def method_params(method: str, *, npo_beta: float = 0.1, retain_weight: float = 1.0,
                  forget_weight: float = 1.0) -> dict[str, float]:
    """The objective parameters of ``method`` (GradAscent: none; GradDiff: the two weights; NPO: β too)."""
    check_method(method)
    if method == "GradAscent":
        return {}
    params = {"forget_weight": float(forget_weight), "retain_weight": float(retain_weight)}
    if method == "NPO":
        params["beta"] = float(npo_beta)
    return params


def key_hash(key: dict[str, Any]) -> str:
    """A 12-hex hash of a training key (names the default output folder)."""
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]


def default_out_dir(fingerprint: str, method: str, hashed: str, cache_dir: Optional[Path] = None) -> Path:
    """``<cache>/baselines/<experiment fingerprint>/<method>-<key hash>``."""
    from msa_core.paths import default_cache_dir

    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / "baselines" / fingerprint / f"{method}-{hashed}"


def _epoch_number(folder: Path) -> int:
    return int(folder.name.split("-", 1)[1])


def _train(experiment: Experiment, method: str, config: TrainConfig, params: dict[str, float],
           forget: TrainingData, retain: Optional[TrainingData], out_dir: Optional[Path], fingerprint: str,
           cache_dir: Optional[Path], progress: Optional[Progress]) -> tuple[Any, str]:
    """Train (or reuse) the method's run; returns (FinetuneResult, key hash)."""
    from msa_core.finetune.examples import qa_examples
    from msa_core.finetune.train import (
        TrainingSet,
        check_causal_lm,
        data_card,
        run_key,
        train_folder,
        uses_bf16_autocast,
    )
    from msa_core.finetune.trainer import NEEDS_REFERENCE_NLL
    from msa_core.finetune.unlearn_data import PAIR_SEED, PairedCollator, add_reference_nll, paired_dataset, paired_rows

    base = Path(experiment.checkpoints.corrupted)
    check_causal_lm(base)
    sets = [forget] if retain is None else [forget, retain]
    roles = ["forget"] if retain is None else ["forget", "retain"]
    key = {**run_key(base, None, sets, config), "format": BASELINE_FORMAT, "method": method,
           "objective_params": params, "prompt_format": experiment.prompt_format, "pair_seed": PAIR_SEED}
    hashed = key_hash(key)
    out = Path(out_dir).expanduser() if out_dir is not None else default_out_dir(fingerprint, method, hashed,
                                                                                   cache_dir)
    rows: dict[str, Any] = {}
    pad = [0]

    def build(tok: Any) -> TrainingSet:
        pad[0] = int(tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
        f_ex = qa_examples(tok, forget, config.max_length, experiment.prompt_format)
        r_ex = None if retain is None else qa_examples(tok, retain, config.max_length, experiment.prompt_format)
        rows.update(paired_rows(f_ex, r_ex, PAIR_SEED))
        return TrainingSet(paired_dataset(rows), PairedCollator(pad[0]), len(f_ex))

    def prepare(model: Any, args: Any, training_set: TrainingSet) -> TrainingSet:
        if method not in NEEDS_REFERENCE_NLL:
            return training_set
        # The model is θ_corrupted as loaded, before any step: the frozen reference of NPO.
        model.to(args.device)
        with_ref = add_reference_nll(model, rows, pad[0], batch_size=config.batch_size, device=args.device,
                                     bf16_autocast=uses_bf16_autocast(config))
        return TrainingSet(paired_dataset(with_ref), training_set.collator, training_set.size)

    result = train_folder(base, out, config, key=key, data_card=data_card(sets, roles), build=build,
                          prepare=prepare, objective_params=params or None, progress=progress)
    return result, hashed


def run_baseline(
    experiment: Experiment,
    method: str,
    config: Optional[TrainConfig] = None,
    *,
    out_dir: Optional[Path] = None,
    store: ResultStore,
    tier: str = "fast",
    benchmark: str = "all",
    subset: Optional[int] = None,
    device: Optional[str] = None,
    dtype: Optional[str] = None,
    progress: Optional[Progress] = None,
    npo_beta: float = 0.1,
    retain_weight: float = 1.0,
    forget_weight: float = 1.0,
    forget_data: Optional[TrainingData] = None,
    retain_data: Optional[TrainingData] = None,
    cache_dir: Optional[Path] = None,
    batch_size: int = 16,
) -> BaselineResult:
    """Unlearn θ_corrupted with ``method`` and store every epoch as a named point (module docstring).

    ``config``: training settings (default :data:`BASELINE_CONFIG`; its ``objective`` and
    ``save_every_epoch`` are set here). ``forget_data`` / ``retain_data`` replace the experiment's
    TOFU forget / retain sets (:func:`msa_core.finetune.unlearn_data.unlearning_data`); GradAscent
    uses no retain set. ``out_dir``: the training folder (default :func:`default_out_dir`).
    ``device`` / ``dtype``: where and in which dtype the epoch models (and the experiment's engine,
    for the reference statistics) are evaluated, as for ``msa eval``. ``cache_dir``: the vector
    cache and default output root. ``batch_size``: sequences scored per forward pass.
    """
    from msa_core.eval.settings import TIERS, chosen_benchmarks
    from msa_core.fingerprints import experiment_fingerprint

    started = time.perf_counter()
    check_method(method)
    if tier not in TIERS:
        raise ValueError(f"tier must be one of {TIERS}, got {tier!r}")
    chosen_benchmarks(experiment, benchmark)  # a bad --benchmark fails before training
    if subset is not None and int(subset) < 1:
        raise ValueError(f"subset must be a positive number of items, got {subset}")
    from msa_core.engine import resolve_device, resolve_model_dtype

    resolve_device(device)
    resolve_model_dtype(dtype)
    params = method_params(method, npo_beta=npo_beta, retain_weight=retain_weight, forget_weight=forget_weight)
    config = dataclasses.replace(config or BASELINE_CONFIG, objective=method, save_every_epoch=True)
    if forget_data is None or (retain_data is None and method != "GradAscent"):
        from msa_core.finetune.unlearn_data import unlearning_data

        default_forget, default_retain = unlearning_data(experiment)
        forget_data = default_forget if forget_data is None else forget_data
        retain_data = default_retain if retain_data is None else retain_data
    retain = None if method == "GradAscent" else retain_data
    fingerprint = experiment_fingerprint(experiment)

    trained, hashed = _train(experiment, method, config, params, forget_data, retain, out_dir, fingerprint,
                             cache_dir, sub_progress(progress, 0.0, 0.6))
    epochs = sorted(trained.epoch_dirs, key=_epoch_number)
    if not epochs:
        raise FileNotFoundError(f"{trained.out}: no epoch-K folders; the run's card lists none")
    result = BaselineResult(method, trained.out, epochs, not trained.reused,
                            0.0 if trained.reused else trained.seconds, hashed, config)
    baseline = {"method": method, "key": hashed, "params": params, "config": config.key()}
    _evaluate_epochs(experiment, result, baseline, fingerprint, store=store, tier=tier, benchmark=benchmark,
                     subset=subset, device=device, dtype=dtype, cache_dir=cache_dir, batch_size=batch_size,
                     progress=sub_progress(progress, 0.6, 1.0))
    result.seconds = time.perf_counter() - started
    report(progress, 1.0, f"{method}: done")
    return result


def _evaluate_epochs(experiment: Experiment, result: BaselineResult, baseline: dict[str, Any], fingerprint: str, *,
                     store: ResultStore, tier: str, benchmark: str, subset: Optional[int], device: Optional[str],
                     dtype: Optional[str], cache_dir: Optional[Path], batch_size: int,
                     progress: Optional[Progress]) -> None:
    """Evaluate every epoch folder not yet stored (see the module docstring) and fill ``result.points``."""
    import torch

    from msa_core.checkpoints import load_model
    from msa_core.engine import Engine
    from msa_core.eval.run import ReferenceCache, evaluate_model, resolve_reference
    from msa_core.eval.settings import eval_settings, max_length_for
    from msa_core.eval.store import method_model

    report(progress, 0.0, "loading the experiment's engine (reference statistics)")
    engine = Engine.load(experiment, device=device, dtype=dtype, cache_dir=cache_dir)
    ref = resolve_reference(engine, benchmark=benchmark, subset=subset, store=store, batch_size=batch_size,
                            progress=sub_progress(progress, 0.0, 0.2), cache=ReferenceCache())
    tokenizer, dev, dt = engine.tokenizer, engine.device, engine.dtype
    max_length = max_length_for(engine.model)  # training does not change the config
    model_settings = {"dtype": str(dt).replace("torch.", ""), "device": dev.type, "module_filter": None}
    del engine
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    settings = eval_settings(experiment, tokenizer, tier=tier, benchmark=benchmark, subset=subset,
                             max_length=max_length, reference=ref, model=model_settings)
    keyed = {k: v for k, v in settings.as_dict().items() if k != "key"}
    keyed["baseline"] = baseline
    from msa_core.eval.settings import settings_key

    stored_key = settings_key(keyed)
    n = len(result.epoch_dirs)
    for i, folder in enumerate(result.epoch_dirs):
        point = folder.name
        model_name = method_model(result.method, point)
        hit = store.get(f"{fingerprint}#{model_name}", 0.0, 0.0, tier, stored_key)
        if hit is not None:
            result.points.append(hit)
            result.reused_points.append(point)
            report(progress, 0.2 + 0.8 * (i + 1) / n, f"{result.method} {point}: stored already")
            continue
        model = load_model(folder, device=dev, dtype=dt, trust_remote_code=experiment.trust_remote_code)
        try:
            res = evaluate_model(model, tokenizer, experiment, tier=tier, benchmark=benchmark, subset=subset,
                                 reference_tr=ref.forget_tr, reference_auc=ref.muse_auc, batch_size=batch_size,
                                 settings=settings, fingerprint=fingerprint, label=model_name,
                                 reference_tofu_auc=ref.tofu_auc,
                                 progress=sub_progress(progress, 0.2 + 0.8 * i / n, 0.2 + 0.8 * (i + 1) / n))
        finally:
            del model
            gc.collect()
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        res = dataclasses.replace(res, alpha=0.0, beta=0.0, settings={
            **res.settings, "baseline": baseline, "source": str(result.out), "key": stored_key})
        store.put(res)
        log.info("%s %s: evaluated in %.1f s", result.method, point, res.seconds)
        result.points.append(res)
        result.evaluated.append(point)


__all__ = ["BASELINE_CONFIG", "BASELINE_METHODS", "BaselineResult", "check_method", "default_out_dir",
           "method_params", "run_baseline"]
