"""``msa baseline``: a gradient-based unlearning baseline (GradAscent, GradDiff, NPO) on an experiment.

    msa baseline METHOD EXPERIMENT [--epochs N] [--lr LR] [--batch-size N] [--grad-accum N]
                 [--npo-beta B] [--retain-weight A] [--forget-weight G] [--tier fast|full]
                 [--benchmark tofu|muse|all] [--subset N] [--device D] [--dtype T] [--out DIR]
                 [--store FILE] [--json FILE|-] [--quiet]

One call of :func:`msa_core.baselines.run_baseline`: unlearns θ_corrupted (reusing a finished
run with the same settings), evaluates each epoch's model and stores it as the named point
``method:METHOD/epoch-K`` in the results store (``msa results`` and the Trade-off page read it).
Training options left out take :data:`msa_core.baselines.BASELINE_CONFIG` (open-unlearning's).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from msa_core.cli.output import add_output_args, emit, note, progress_for

# The names are msa_core.baselines.BASELINE_METHODS; listed here so `msa --help` stays import-light.
METHODS = ("GradAscent", "GradDiff", "NPO")
# Options passed on to TrainConfig when given (dest → TrainConfig field).
_CONFIG_OPTIONS = {"epochs": "epochs", "lr": "lr", "batch_size": "batch_size", "grad_accum": "grad_accum",
                   "max_length": "max_length", "seed": "seed", "precision": "precision", "threads": "num_threads"}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``baseline`` to the ``msa`` parser."""
    p = sub.add_parser("baseline", help="unlearn with GradAscent / GradDiff / NPO and store each epoch's metrics",
                       description="Unlearn the experiment's corrupted model with a gradient-based method "
                                   "(open-unlearning's losses), keep every epoch, evaluate each one and store it "
                                   "as a named point of the experiment.")
    p.add_argument("method", choices=METHODS, help="the unlearning loss")
    p.add_argument("experiment", help="experiment YAML file")
    p.add_argument("--epochs", type=int, default=None, help="epochs (default 10, open-unlearning's)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default 1e-5)")
    p.add_argument("--batch-size", type=int, default=None, help="forget examples per device batch (default 8)")
    p.add_argument("--grad-accum", type=int, default=None, help="gradient accumulation steps (default 4)")
    p.add_argument("--max-length", type=int, default=None, help="longest tokenised example (default 512)")
    p.add_argument("--seed", type=int, default=None, help="training seed (default 0)")
    p.add_argument("--precision", default=None,
                   help="auto (bf16 autocast on a GPU; the default) | fp32 | bf16; master weights are fp32 always")
    p.add_argument("--threads", type=int, default=None, help="CPU torch threads while training")
    p.add_argument("--npo-beta", type=float, default=0.1, help="NPO's β (default 0.1)")
    p.add_argument("--retain-weight", type=float, default=1.0,
                   help="weight of the retain NLL term (GradDiff, NPO; open-unlearning's alpha; default 1)")
    p.add_argument("--forget-weight", type=float, default=1.0,
                   help="weight of the forget term (GradDiff, NPO; open-unlearning's gamma; default 1)")
    p.add_argument("--tier", choices=("fast", "full"), default="fast",
                   help="fast: teacher-forced only; full: + generation")
    p.add_argument("--benchmark", choices=("tofu", "muse", "all"), default="all",
                   help="which benchmarks' metrics (default all the experiment has data for)")
    p.add_argument("--subset", type=int, default=None, help="evaluate only the first N items of each split")
    p.add_argument("--device", default=None, help="where the epoch models are evaluated (default: cuda if available)")
    p.add_argument("--dtype", default=None, help="evaluation dtype (default: the corrupted checkpoint's)")
    p.add_argument("--eval-batch-size", type=int, default=16, metavar="N",
                   help="sequences scored per forward pass (default 16; results do not depend on it)")
    p.add_argument("--out", type=Path, default=None,
                   help="training folder (default: cache/baselines/<experiment fingerprint>/<method>-<key hash>)")
    p.add_argument("--store", default=None, help="results database (default: cache/results.sqlite)")
    add_output_args(p)
    p.set_defaults(func=cmd_baseline)


def _fmt(v: Any) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}"


def cmd_baseline(args: argparse.Namespace) -> int:
    from msa_core.baselines import BASELINE_CONFIG, run_baseline
    from msa_core.eval.store import ResultStore
    from msa_core.experiment import load_experiment

    experiment = load_experiment(args.experiment)
    given = {field: getattr(args, dest) for dest, field in _CONFIG_OPTIONS.items() if getattr(args, dest) is not None}
    import dataclasses

    config = dataclasses.replace(BASELINE_CONFIG, **given)
    store = ResultStore(args.store) if args.store else ResultStore()
    res = run_baseline(experiment, args.method, config, out_dir=args.out, store=store, tier=args.tier,
                       benchmark=args.benchmark, subset=args.subset, device=args.device, dtype=args.dtype,
                       progress=progress_for(args), npo_beta=args.npo_beta, retain_weight=args.retain_weight,
                       forget_weight=args.forget_weight, batch_size=args.eval_batch_size)
    note(args, f"{args.method}: {'trained' if res.trained else 'reused'} {res.out}")
    payload = {
        "method": res.method, "out": str(res.out), "trained": res.trained, "train_seconds": round(res.train_seconds, 3),
        "seconds": round(res.seconds, 3), "key": res.key_hash, "config": res.config.key(),
        "evaluated": res.evaluated, "reused_points": res.reused_points,
        "points": [{"point": d.name, **p.to_json()} for d, p in zip(res.epoch_dirs, res.points)],
    }

    def human() -> None:
        how = f"trained in {res.train_seconds:.1f} s" if res.trained else "training reused"
        print(f"{res.method} on {experiment.name}: {how}; {len(res.evaluated)} epoch(s) evaluated, "
              f"{len(res.reused_points)} already stored ({res.seconds:.1f} s in all)")
        print(f"  folder {res.out}")
        print(f"  {'point':<10}{'FQ':>10}{'MU':>10}{'MU_tf':>10}{'fgt_TR':>10}{'fgt_p':>10}{'ret_p':>10}")
        for d, p in zip(res.epoch_dirs, res.points):
            print(f"  {d.name:<10}{_fmt(p.get('forget_quality')):>10}{_fmt(p.get('model_utility')):>10}"
                  f"{_fmt(p.get('model_utility_tf')):>10}{_fmt(p.get('forget_truth_ratio')):>10}"
                  f"{_fmt(p.get('forget_prob')):>10}{_fmt(p.get('retain_prob')):>10}")
        print("  FQ = forget_quality, MU = model_utility, fgt_TR = forget_truth_ratio, "
              "fgt_p / ret_p = forget / retain probability")

    emit(args.json, payload, human)
    return 0
