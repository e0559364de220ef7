"""``msa rtt``: the relearning attack (RTT) on the unlearned model at (α, β), the corrupted and the reference model.

    msa rtt EXPERIMENT --alpha A --beta B [--folds K] [--rounds R] [--epochs E] [--lrs 1e-4,3e-4,1e-3]
            [--quick] [--store FILE | --no-store] [--json FILE|-]

One call of :func:`msa_core.rtt.run_rtt`. Runs are kept in the results database
(``cache/results.sqlite`` unless ``--store``), so a killed run continues where it stopped
and a rerun computes nothing. Prints the lr sweep, each model's best lr and the recovery.
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from msa_core.cli.models import add_engine_args, add_point_args, experiment_at_point, load_engine
from msa_core.cli.output import add_output_args, emit, note, progress_for

if TYPE_CHECKING:
    from msa_core.rtt import AttackSettings, RttReport


def _lrs(text: Optional[str]) -> Optional[tuple[float, ...]]:
    if text is None:
        return None
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"--lrs must be comma-separated numbers such as 1e-4,3e-4,1e-3, got {text!r}") from None
    if not values:
        raise ValueError("--lrs names no learning rate")
    return values


def attack_settings(args: argparse.Namespace) -> AttackSettings:
    """The attack the options ask for: ``--quick`` is the preset, other options override it."""
    from msa_core.rtt import AttackSettings

    given = {"folds": args.folds, "rounds": args.rounds, "epochs": args.epochs, "lrs": _lrs(args.lrs),
             "batch_size": args.batch_size, "seed": args.seed, "max_new_tokens": args.max_new_tokens}
    given = {k: v for k, v in given.items() if v is not None}
    return AttackSettings.quick(**given) if args.quick else AttackSettings(**given)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``rtt`` to the ``msa`` parser."""
    p = sub.add_parser("rtt", help="relearning attack: is the forget set really gone at (α, β)?",
                       description="Fine-tune on some forget-set entities, measure the held-out ones; the same "
                                   "attack on the corrupted and the reference model gives recovery as a fraction.")
    add_engine_args(p)
    add_point_args(p)
    p.add_argument("--folds", type=int, default=None,
                   help="entity folds of the forget set (default: one per entity, at most 5)")
    p.add_argument("--rounds", type=int, default=None,
                   help="how many folds are held out in turn (default: all; --quick: 1)")
    p.add_argument("--epochs", type=int, default=None, help="attack epochs (default 4; --quick: 3)")
    p.add_argument("--lrs", default=None,
                   help="comma-separated lr sweep (default: 1e-4,3e-4,1e-3 below 100M parameters, else 1e-5,3e-5,1e-4)")
    p.add_argument("--batch-size", type=int, default=None, help="attack batch size (default 4)")
    p.add_argument("--seed", type=int, default=None, help="training seed (default 42)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="greedy answer length (default 200)")
    p.add_argument("--quick", action="store_true", help="2 folds, 1 held out, 3 epochs, one lr (the app's setting)")
    p.add_argument("--store", default=None, help="results database (default: cache/results.sqlite)")
    p.add_argument("--no-store", action="store_true", help="neither read nor write stored runs")
    add_output_args(p)
    p.set_defaults(func=cmd_rtt)


def _pct(x: Optional[float]) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{100 * x:.0f}%"


def print_report(report: RttReport) -> None:
    """The sweep table, each model's best lr and the recovery fractions."""
    print(f"relearning attack at α={report.alpha:g} β={report.beta:g}  ({report.computed} run(s) computed, "
          f"{report.seconds:.1f}s)")
    for f in report.folds:
        print(f"  fold {f.index}: {', '.join(f.entities)} ({len(f)} items)")
    print(f"  {'model':<10}{'lr':>8}{'p(gold)':>10}{'ROUGE-L':>10}{'exact':>8}{'items':>7}")
    for row in report.sweep():
        lr = "none" if row["lr"] == 0 else f"{row['lr']:g}"
        print(f"  {row['model']:<10}{lr:>8}{row['p_gold']:>10.3f}{row['rouge']:>10.3f}{row['exact']:>8.2f}"
              f"{row['items']:>7}")
    rec, before, lrs = report.recovery(), report.recovery_before(), report.best_lrs()
    print("  recovery at each model's best lr per metric (0% = reference attacked, 100% = corrupted attacked;"
          " in brackets: before the attack):")
    for model in report.models():
        r, b, lr = rec.get(model, {}), before.get(model, {}), lrs.get(model, {})
        parts = [f"{label} {_pct(r.get(m))} ({_pct(b.get(m))}) at lr {lr.get(m, 0):g}"
                 for m, label in (("p_gold", "p(gold)"), ("rouge", "ROUGE-L"), ("exact", "exact"))]
        print(f"  {model:<10} " + ", ".join(parts))


def cmd_rtt(args: argparse.Namespace) -> int:
    from msa_core.rtt import RttStore, run_rtt
    from msa_core.targets import Point

    settings = attack_settings(args)  # bad options fail before the model loads
    experiment = experiment_at_point(args)
    if args.no_store:
        store = RttStore(Path(tempfile.mkdtemp(prefix="msa-rtt-")) / "results.sqlite")
    else:
        store = RttStore(args.store) if args.store else RttStore()
    engine = load_engine(args, experiment)
    report = run_rtt(engine, Point(args.alpha, args.beta), settings, store=store, progress=progress_for(args))
    if report.computed == 0:
        note(args, f"every run came from the store {store.path} (nothing recomputed)")
    emit(args.json, report.to_json(), lambda: print_report(report))
    return 0
