"""The ``msa eval``, ``msa sweep`` and ``msa results`` subcommands (registered by msa_core.cli).

    msa eval EXPERIMENT --alpha A --beta B [--tier fast|full] [--benchmark tofu|muse|all]
             [--json FILE] [--open-unlearning-dir DIR] [--subset N]
    msa sweep EXPERIMENT --alphas 0,0.5,1,1.5,2 --betas 0,0.5,1 [--tier ...] [--json FILE]
    msa results EXPERIMENT [--json] [--tier fast|full]

Results go to the results store (``cache/results.sqlite`` unless ``--store``). Like the
rest of the CLI this module prints; nothing else in msa_core.eval does.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from msa_core.eval.results import METRIC_INFO, METRIC_ORDER, EvalResult


def _engine_args(p: argparse.ArgumentParser) -> None:
    from msa_core.cli import _add_engine_args

    _add_engine_args(p)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tier", choices=("fast", "full"), default="fast", help="fast: teacher-forced only; full: + generation")
    p.add_argument("--benchmark", choices=("tofu", "muse", "all"), default="all")
    p.add_argument("--subset", type=int, default=None, help="evaluate only the first N items of each split")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--store", default=None, help="results database (default: cache/results.sqlite)")
    p.add_argument("--no-store", action="store_true", help="neither read nor write the results store")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def register(subparsers: Any) -> None:
    """Add ``eval``, ``sweep`` and ``results`` to an argparse subparsers object."""
    p = subparsers.add_parser("eval", help="TOFU/MUSE metrics of the unlearned model at (α, β)")
    _engine_args(p)
    p.add_argument("--alpha", type=float, required=True)
    p.add_argument("--beta", type=float, default=0.0)
    _common(p)
    p.add_argument("--json", metavar="FILE", default=None, help="write the result as JSON ('-' = stdout)")
    p.add_argument("--open-unlearning-dir", metavar="DIR", default=None, help="write TOFU_EVAL.json / TOFU_SUMMARY.json here")
    p.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty --open-unlearning-dir")
    p.set_defaults(func=cmd_eval)

    p = subparsers.add_parser("sweep", help="evaluate an α/β grid (resumable; stored points are skipped)")
    _engine_args(p)
    p.add_argument("--alphas", required=True, help="comma list (0,0.5,1) or start:stop:step")
    p.add_argument("--betas", default="0", help="comma list or start:stop:step (default 0)")
    _common(p)
    p.add_argument("--json", metavar="FILE", default=None, help="write all grid results as JSON ('-' = stdout)")
    p.set_defaults(func=cmd_sweep)

    p = subparsers.add_parser("results", help="stored results of an experiment (table or JSON)")
    p.add_argument("experiment", help="experiment YAML file")
    p.add_argument("--tier", choices=("fast", "full"), default=None)
    p.add_argument("--store", default=None, help="results database (default: cache/results.sqlite)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_results)


def _store(args: argparse.Namespace) -> Any:
    if getattr(args, "no_store", False):
        return None
    from msa_core.eval.store import ResultStore

    return ResultStore(args.store) if args.store else ResultStore()


def _progress(args: argparse.Namespace) -> Any:
    from msa_core.cli import text_progress

    return text_progress(not args.quiet and args.json != "-")


def _write_json(target: str, payload: Any) -> None:
    text = json.dumps(payload, indent=2, default=str)
    if target == "-":
        print(text)
        return
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text + "\n", encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OSError(exc.errno, f"writing {path} failed: {exc.strerror or exc}") from exc


def _fmt(v: float) -> str:
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


def cmd_eval(args: argparse.Namespace) -> int:
    from msa_core.cli import _load_engine
    from msa_core.eval.evaluate import evaluate

    args_json = args.json
    args.json = args_json == "-"  # _load_engine reads args.json as "quiet"
    engine = _load_engine(args)
    args.json = args_json
    store = _store(args)
    res = evaluate(engine, args.alpha, args.beta, tier=args.tier, benchmark=args.benchmark, subset=args.subset,
                   progress=_progress(args), store=store, batch_size=args.batch_size)
    if args.open_unlearning_dir:
        from msa_core.eval.openunlearning import export_open_unlearning

        for path in export_open_unlearning(res, args.open_unlearning_dir, overwrite=args.overwrite):
            print(f"wrote {path}", file=sys.stderr)
    if args.json:
        _write_json(args.json, res.to_json())
    if args.json != "-":
        print_result(res)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from msa_core.cli import _load_engine
    from msa_core.eval.store import ResultStore
    from msa_core.eval.sweep import parse_grid, run_sweep

    alphas = parse_grid(args.alphas, name="--alphas")
    betas = parse_grid(args.betas, name="--betas")
    args_json = args.json
    args.json = args_json == "-"
    engine = _load_engine(args)
    args.json = args_json
    store = _store(args)
    if store is None:  # a sweep is only resumable through a store; use a throw-away one
        import tempfile

        store = ResultStore(Path(tempfile.mkdtemp(prefix="msa-sweep-")) / "results.sqlite")
    quiet = args.json == "-"

    def on_point(res: EvalResult, was_stored: bool) -> None:
        if not quiet:
            fq, mu = res.get("forget_quality"), res.get("model_utility", res.get("model_utility_tf"))
            tag = "stored" if was_stored else f"{res.seconds:.1f}s"
            print(f"\nα={res.alpha:g} β={res.beta:g}  forget_quality={_fmt(fq)}  utility={_fmt(mu)}  ({tag})", file=sys.stderr)

    results = run_sweep(engine, store, alphas, betas, tier=args.tier, benchmark=args.benchmark, subset=args.subset,
                        progress=_progress(args), on_point=on_point, batch_size=args.batch_size)
    if args.json:
        _write_json(args.json, [r.to_json() for r in results])
    if not quiet:
        df = store.grid(engine.fingerprint, tier=args.tier, settings_key=results[0].settings_key)
        _print_table(df)
    return 0


def _print_table(df: Any) -> None:
    import pandas as pd

    if df.empty:
        print("no stored results")
        return
    cols = ["alpha", "beta", "tier"] + [c for c in df.columns if c in METRIC_INFO]
    with pd.option_context("display.max_columns", None, "display.width", 200, "display.float_format", "{:.4g}".format):
        print(df[cols].to_string(index=False))


def cmd_results(args: argparse.Namespace) -> int:
    from msa_core.checkpoints import experiment_fingerprint
    from msa_core.eval.store import ResultStore
    from msa_core.experiment import load_experiment

    exp = load_experiment(args.experiment)
    fp = experiment_fingerprint(exp)
    store = ResultStore(args.store) if args.store else ResultStore()
    if args.json:
        print(json.dumps([r.to_json() for r in store.results(fp, tier=args.tier)], indent=2, default=str))
    else:
        print(f"{exp.name}: {store.count(fp)} stored point(s) in {store.path}")
        _print_table(store.grid(fp, tier=args.tier))
    return 0
