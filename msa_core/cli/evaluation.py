"""``msa eval``, ``msa sweep`` and ``msa results``: TOFU/MUSE metrics through the results store.

    msa eval EXPERIMENT --alpha A --beta B [--tier fast|full] [--benchmark tofu|muse|all]
             [--subset N] [--open-unlearning-dir DIR] [--json FILE|-]
    msa sweep EXPERIMENT --alphas 0,0.5,1,1.5,2 --betas 0:1:0.5 [--tier ...] [--json FILE|-]
    msa results EXPERIMENT [--tier fast|full] [--json FILE|-]

Results go to the results store (``cache/results.sqlite`` unless ``--store``), the same
store the app reads. Each run owns one :class:`ReferenceCache`.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from msa_core.cli.models import add_engine_args, add_point_args, experiment_at_point, load_engine
from msa_core.cli.output import add_output_args, chatty, emit, note, progress_for
from msa_core.eval.results import METRIC_INFO, METRIC_ORDER, EvalResult

if TYPE_CHECKING:
    import pandas as pd

    from msa_core.eval.store import ResultStore


def _add_eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tier", choices=("fast", "full"), default="fast",
                   help="fast: teacher-forced only; full: + generation")
    p.add_argument("--benchmark", choices=("tofu", "muse", "all"), default="all")
    p.add_argument("--subset", type=int, default=None, help="evaluate only the first N items of each split")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--store", default=None, help="results database (default: cache/results.sqlite)")
    p.add_argument("--no-store", action="store_true", help="neither read nor write the results store")


def _open_store(path: Optional[str]) -> ResultStore:
    from msa_core.eval.store import ResultStore

    return ResultStore(path) if path else ResultStore()


def _fmt(v: Optional[float]) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}"


def print_result(res: EvalResult) -> None:
    """A human table: metric, value, direction and ideal."""
    head = f"α={res.alpha:g} β={res.beta:g}" if res.alpha is not None else res.model
    print(f"{head}  tier={res.tier}  benchmark={res.benchmark}  {res.seconds:.2f}s  settings={res.settings_key}")
    names = [m for m in METRIC_ORDER if m in res.metrics] + sorted(set(res.metrics) - set(METRIC_ORDER))
    for name in names:
        info = METRIC_INFO.get(name)
        label = info.label if info else name
        hint = info.direction_text() if info else ""
        print(f"  {label:<34}{_fmt(res.metrics[name].value):>10}   {hint}")
    missing = res.settings.get("missing") or []
    if missing:
        print(f"  (splits not found: {', '.join(missing)})")


def print_table(df: pd.DataFrame) -> None:
    """The stored grid: α, β, tier and every known metric column."""
    import pandas as pd

    if df.empty:
        print("no stored results")
        return
    cols = ["alpha", "beta", "tier"] + [c for c in df.columns if c in METRIC_INFO]
    with pd.option_context("display.max_columns", None, "display.width", 200, "display.float_format", "{:.4g}".format):
        print(df[cols].to_string(index=False))


def cmd_eval(args: argparse.Namespace) -> int:
    from msa_core.eval.openunlearning import export_open_unlearning
    from msa_core.eval.run import ReferenceCache, evaluate

    engine = load_engine(args, experiment_at_point(args))
    store = None if args.no_store else _open_store(args.store)
    res = evaluate(engine, args.alpha, args.beta, tier=args.tier, benchmark=args.benchmark, subset=args.subset,
                   progress=progress_for(args), store=store, batch_size=args.batch_size,
                   reference_cache=ReferenceCache())
    if args.open_unlearning_dir:
        for path in export_open_unlearning(res, args.open_unlearning_dir, overwrite=args.overwrite):
            note(args, f"wrote {path}")
    emit(args.json, res.to_json(), lambda: print_result(res))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from msa_core.eval.run import ReferenceCache
    from msa_core.eval.store import ResultStore
    from msa_core.eval.sweep import parse_grid, run_sweep
    from msa_core.experiment import load_experiment

    experiment = load_experiment(args.experiment)
    alphas = parse_grid(args.alphas, name="--alphas", within=experiment.alpha_range)
    betas = parse_grid(args.betas, name="--betas", within=experiment.beta_range)
    engine = load_engine(args, experiment)
    if args.no_store:  # a sweep resumes through a store: use a throw-away one
        store = ResultStore(Path(tempfile.mkdtemp(prefix="msa-sweep-")) / "results.sqlite")
    else:
        store = _open_store(args.store)

    def on_point(res: EvalResult, was_stored: bool) -> None:
        if chatty(args):
            fq, mu = res.get("forget_quality"), res.get("model_utility", res.get("model_utility_tf"))
            tag = "stored" if was_stored else f"{res.seconds:.1f}s"
            print(f"\nα={res.alpha:g} β={res.beta:g}  forget_quality={_fmt(fq)}  utility={_fmt(mu)}  ({tag})",
                  file=sys.stderr)

    results = run_sweep(engine, store, alphas, betas, tier=args.tier, benchmark=args.benchmark, subset=args.subset,
                        progress=progress_for(args), on_point=on_point, batch_size=args.batch_size,
                        reference_cache=ReferenceCache())
    grid = store.grid(engine.fingerprint, tier=args.tier, settings_key=results[0].settings_key)
    emit(args.json, [r.to_json() for r in results], lambda: print_table(grid))
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    from msa_core.experiment import load_experiment
    from msa_core.fingerprints import experiment_fingerprint

    experiment = load_experiment(args.experiment)
    fp = experiment_fingerprint(experiment)
    store = _open_store(args.store)
    stored = store.results(fp, tier=args.tier)

    def human() -> None:
        print(f"{experiment.name}: {store.count(fp)} stored point(s) in {store.path}")
        print_table(store.grid(fp, tier=args.tier))

    emit(args.json, [r.to_json() for r in stored], human)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add eval, sweep and results to the ``msa`` parser."""
    p = sub.add_parser("eval", help="TOFU/MUSE metrics of the unlearned model at (α, β)")
    add_engine_args(p)
    add_point_args(p)
    _add_eval_args(p)
    p.add_argument("--open-unlearning-dir", metavar="DIR", default=None,
                   help="write TOFU_EVAL.json / TOFU_SUMMARY.json here")
    p.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty --open-unlearning-dir")
    add_output_args(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("sweep", help="evaluate an α/β grid (resumable; stored points are skipped)")
    add_engine_args(p)
    p.add_argument("--alphas", required=True, help="comma list (0,0.5,1) or start:stop:step")
    p.add_argument("--betas", default="0", help="comma list or start:stop:step (default 0)")
    _add_eval_args(p)
    add_output_args(p)
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("results", help="stored results of an experiment (table or JSON)")
    p.add_argument("experiment", help="experiment YAML file")
    p.add_argument("--tier", choices=("fast", "full"), default=None)
    p.add_argument("--store", default=None, help="results database (default: cache/results.sqlite)")
    add_output_args(p)
    p.set_defaults(func=cmd_results)
