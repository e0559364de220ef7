"""``msa import``: open-unlearning result folders into the results store as named points.

Each FOLDER (holding TOFU_EVAL.json and/or TOFU_SUMMARY.json, or an ``evals/`` folder that
does) becomes one point ``method:<method>/<folder name>`` of EXPERIMENT (:func:`msa_core.eval.
openunlearning.import_run`); ``--name`` names the method (default: each folder's name).
Importing again replaces the points, so a rerun adds no duplicate.
"""

from __future__ import annotations

import argparse
import math

from msa_core.cli.output import add_output_args, emit, note

# The metrics the summary line shows, when the imported run has them.
_SHOWN = ("forget_quality", "model_utility", "forget_truth_ratio", "tofu_privleak")


def cmd_import(args: argparse.Namespace) -> int:
    from msa_core.eval.openunlearning import import_run
    from msa_core.eval.store import ResultStore
    from msa_core.experiment import load_experiment
    from msa_core.fingerprints import experiment_fingerprint

    experiment = load_experiment(args.experiment)
    fingerprint = experiment_fingerprint(experiment)
    store = ResultStore(args.store) if args.store else ResultStore()
    results = []
    for folder in args.folders:
        res = import_run(store, fingerprint, folder, args.name)
        note(args, f"imported {folder} as {res.model}")
        results.append(res)

    def human() -> None:
        print(f"{experiment.name}: {len(results)} open-unlearning run(s) imported into {store.path}")
        for r in results:
            shown = "  ".join(f"{k}={r.get(k):.4g}" for k in _SHOWN
                              if r.get(k) is not None and math.isfinite(float(r.get(k))))  # type: ignore[arg-type]
            print(f"  {r.model}  ({r.tier}, {len(r.metrics)} metrics)  {shown}")

    emit(args.json, [r.to_json() for r in results], human)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``import`` to the ``msa`` parser."""
    p = sub.add_parser("import", help="read open-unlearning result folders (TOFU_EVAL/SUMMARY.json) as named points")
    p.add_argument("folders", nargs="+", metavar="FOLDER",
                   help="open-unlearning result folder(s) holding TOFU_EVAL.json and/or TOFU_SUMMARY.json")
    p.add_argument("experiment", help="experiment YAML file the runs belong to (their points join its plots)")
    p.add_argument("--name", default=None,
                   help="method name of the series (NPO, GradDiff, …); default: each folder's name")
    p.add_argument("--store", default=None, help="results database (default: cache/results.sqlite)")
    add_output_args(p)
    p.set_defaults(func=cmd_import)
