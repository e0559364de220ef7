"""``msa eval``, ``msa sweep`` and ``msa results``: TOFU/MUSE metrics through the results store.

    msa eval EXPERIMENT --alpha A --beta B [--tier fast|full] [--benchmark tofu|muse|all]
             [--subset N] [--open-unlearning-dir DIR] [--json FILE|-]
    msa sweep EXPERIMENT --alphas 0,0.5,1,1.5,2 --betas 0:1:0.5 [--tier ...] [--json FILE|-]
              [--processes N] [--store-per-rank]
    accelerate launch [--multi_gpu --num_processes N …] -m msa_core sweep EXPERIMENT …
    msa results EXPERIMENT [--tier fast|full] [--columns a,b | --all-columns] [--json FILE|-]
    msa results --merge A.sqlite B.sqlite … [--into STORE]

Sweeps over several processes (:mod:`msa_core.eval.distributed`): a ``msa sweep`` started by
``accelerate launch`` (``$WORLD_SIZE`` > 1) evaluates its share of the grid on its own device;
``msa sweep --processes N`` starts N such processes on this host itself and waits for them. The
main process prints the table (or JSON) of the whole grid; a failed process makes the command
exit 1 after saying how much is stored (running it again finishes the grid).

Results go to the results store (``cache/results.sqlite`` unless ``--store``), the same
store the app reads. Each run owns one :class:`ReferenceCache`. A point already in the store is
not evaluated again: ``msa eval`` says so, with when and how long it was computed.

Tables print one tier and settings at a time with a compact set of columns
(:data:`COMPACT_COLUMNS`, short headings explained under the table); ``--columns`` picks
others, ``--all-columns`` shows every metric.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from msa_core.cli.models import (
    add_choice_args,
    add_engine_args,
    add_point_args,
    chosen_experiment,
    experiment_at_point,
    load_engine,
    requested_threads,
)
from msa_core.cli.output import add_output_args, chatty, emit, note, progress_for
from msa_core.eval.results import METRIC_INFO, METRIC_ORDER, EvalResult

if TYPE_CHECKING:
    import pandas as pd

    from msa_core.eval.store import ResultStore
    from msa_core.experiment import Experiment


# The columns ``msa results`` shows by default, per tier: the headline numbers of each tier.
COMPACT_COLUMNS = {
    "fast": ("forget_quality", "model_utility_tf", "forget_truth_ratio", "forget_prob", "retain_prob",
             "extraction_strength", "muse_privleak"),
    "full": ("forget_quality", "model_utility", "forget_rouge", "retain_rouge", "forget_truth_ratio",
             "muse_knowmem_forget", "muse_privleak"),
}
# Short headings so a table fits 100 columns; explained in a legend under it.
SHORT_NAMES = {
    "forget_quality": "FQ", "model_utility": "MU", "model_utility_tf": "MU_tf", "forget_truth_ratio": "fgt_TR",
    "forget_prob": "fgt_p", "retain_prob": "ret_p", "extraction_strength": "ES", "muse_privleak": "PrivLeak",
    "forget_rouge": "fgt_R", "retain_rouge": "ret_R", "muse_knowmem_forget": "KnowMem_f",
}


# The legend under a table wraps at this width (a 100-column terminal).
_LEGEND_WIDTH = 100


def _add_eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tier", choices=("fast", "full"), default="fast",
                   help="fast: teacher-forced only; full: + generation")
    p.add_argument("--benchmark", choices=("tofu", "muse", "all"), default="all",
                   help="which benchmarks' metrics (default all the experiment has data for)")
    p.add_argument("--subset", type=int, default=None, help="evaluate only the first N items of each split")
    p.add_argument("--batch-size", type=int, default=None, metavar="N",
                   help="sequences scored per forward pass (default: from free GPU memory, 16 on the CPU; "
                        "results do not depend on it beyond floating-point rounding)")
    p.add_argument("--store", default=None, help="results database (default: cache/results.sqlite)")
    p.add_argument("--no-store", action="store_true", help="neither read nor write the results store")


def _open_store(path: Optional[str]) -> ResultStore:
    from msa_core.eval.store import ResultStore

    return ResultStore(path) if path else ResultStore()


def _fmt(v: Optional[float]) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}"


def _when(stamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(stamp))


def print_result(res: EvalResult, stored_at: Optional[float] = None, wall: Optional[float] = None) -> None:
    """A human table: metric, value, direction and ideal. ``stored_at``: when the result was taken
    from the results store, the time it was stored; ``wall``: the whole command's seconds (both
    said in the header, next to the evaluation's own time)."""
    head = f"α={res.alpha:g} β={res.beta:g}" if res.alpha is not None else res.model
    timing = (f"stored result, computed in {res.seconds:.2f} s on {_when(stored_at)}" if stored_at is not None
              else f"computed in {res.seconds:.2f} s")
    if wall is not None:
        timing += f" (this command: {wall:.1f} s in all, model loading included)"
    print(f"{head}  tier={res.tier}  benchmark={res.benchmark}  {timing}  settings={res.settings_key}")
    names = [m for m in METRIC_ORDER if m in res.metrics] + sorted(set(res.metrics) - set(METRIC_ORDER))
    for name in names:
        info = METRIC_INFO.get(name)
        label = info.label if info else name
        hint = info.direction_text() if info else ""
        print(f"  {label:<34}{_fmt(res.metrics[name].value):>10}   {hint}")
    missing = res.settings.get("missing") or []
    if missing:
        print(f"  (splits not found: {', '.join(missing)})")


def table_columns(df: pd.DataFrame, tier: str, columns: Optional[Sequence[str]] = None,
                  all_columns: bool = False) -> list[str]:
    """The metric columns of one tier's table: ``columns`` as given, every metric with a value
    (``all_columns``), or the tier's :data:`COMPACT_COLUMNS` that have a value."""
    if columns:
        return list(columns)
    has_value = [c for c in df.columns if c in METRIC_INFO and df[c].notna().any()]
    if all_columns:
        return has_value
    return [c for c in COMPACT_COLUMNS.get(tier, ()) if c in has_value]


def _group_title(group: pd.DataFrame, tier: str, key: str) -> str:
    subset = group["subset"].iloc[0] if "subset" in group else None
    items = "all items" if subset is None or (isinstance(subset, float) and math.isnan(subset)) \
        else f"first {int(subset)} items"
    bench = group["benchmark"].iloc[0] if "benchmark" in group else "?"
    return f"tier {tier} · benchmark {bench} · {items} · {len(group)} point(s) · settings {str(key)[:8]}"


def print_table(df: pd.DataFrame, *, columns: Optional[Sequence[str]] = None, all_columns: bool = False) -> None:
    """The stored grid, one table per (tier, settings): α, β and that tier's columns
    (:func:`table_columns`), short headings explained under each table."""
    import pandas as pd

    if df.empty:
        print("no stored results")
        return
    tiers = [t for t in ("fast", "full") if t in set(df["tier"])] + sorted(set(df["tier"]) - {"fast", "full"})
    for tier in tiers:
        of_tier = df[df["tier"] == tier]
        for key, group in of_tier.groupby("settings_key", sort=False):
            cols = table_columns(group, tier, columns, all_columns)
            shown = group[["alpha", "beta", *cols]].sort_values(["alpha", "beta"])
            renamed = shown.rename(columns={c: SHORT_NAMES.get(c, c) for c in cols})
            print(f"\n{_group_title(group, tier, key)}")
            with pd.option_context("display.max_columns", None, "display.width", 10_000,
                                   "display.float_format", "{:.4g}".format):
                print(renamed.to_string(index=False))
            legend = [f"{SHORT_NAMES[c]} = {c}" for c in cols if c in SHORT_NAMES]
            if legend:
                print(textwrap.fill(", ".join(legend), width=_LEGEND_WIDTH, initial_indent="  ",
                                    subsequent_indent="  "))


def _check_open_unlearning_dir(args: argparse.Namespace) -> None:
    """The export folder's rules (msa_core.eval.openunlearning.export_open_unlearning), checked
    before the model is loaded."""
    if not args.open_unlearning_dir:
        return
    out = Path(args.open_unlearning_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--open-unlearning-dir {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise FileExistsError(f"--open-unlearning-dir {out} is not empty; add --overwrite to replace its files")


def cmd_eval(args: argparse.Namespace) -> int:
    from msa_core.eval.openunlearning import export_open_unlearning
    from msa_core.eval.run import ReferenceCache, evaluate

    started_wall = time.perf_counter()
    experiment = experiment_at_point(args)
    _check_open_unlearning_dir(args)
    engine = load_engine(args, experiment)
    store = None if args.no_store else _open_store(args.store)
    started = time.time()
    res = evaluate(engine, args.alpha, args.beta, tier=args.tier, benchmark=args.benchmark, subset=args.subset,
                   progress=progress_for(args), store=store, batch_size=args.batch_size,
                   reference_cache=ReferenceCache())
    stored_at = None
    if store is not None:
        when = store.stored_at(engine.fingerprint, args.alpha, args.beta, res.tier, res.settings_key)
        # Stored before this command started: the result came from the store, not from this run.
        stored_at = when if when is not None and when < started else None
    if args.open_unlearning_dir:
        for path in export_open_unlearning(res, args.open_unlearning_dir, overwrite=args.overwrite):
            note(args, f"wrote {path}")
    wall = time.perf_counter() - started_wall
    payload = {**res.to_json(), "from_store": stored_at is not None,
               "stored_at": None if stored_at is None else _when(stored_at), "command_seconds": round(wall, 3)}
    emit(args.json, payload, lambda: print_result(res, stored_at, wall))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from msa_core.eval.distributed import launched_processes

    if launched_processes() > 1:
        return _sweep_process(args)
    if getattr(args, "processes", 1) > 1:
        return _launch_sweep(args)
    return _sweep_here(args)


def _grids(args: argparse.Namespace) -> tuple[Experiment, list[float], list[float]]:
    """The experiment and the checked --alphas / --betas (before anything heavy is loaded)."""
    from msa_core.eval.sweep import parse_grid
    from msa_core.experiment import load_experiment

    experiment = load_experiment(args.experiment)
    alphas = parse_grid(args.alphas, name="--alphas", within=experiment.alpha_range)
    betas = parse_grid(args.betas, name="--betas", within=experiment.beta_range)
    return experiment, alphas, betas


def _point_printer(args: argparse.Namespace, prefix: str = "") -> Callable[[EvalResult, bool], None]:
    def on_point(res: EvalResult, was_stored: bool) -> None:
        if chatty(args):
            fq, mu = res.get("forget_quality"), res.get("model_utility", res.get("model_utility_tf"))
            tag = "stored" if was_stored else f"{res.seconds:.1f}s"
            print(f"\n{prefix}α={res.alpha:g} β={res.beta:g}  forget_quality={_fmt(fq)}  utility={_fmt(mu)}  ({tag})",
                  file=sys.stderr)
    return on_point


def _check_process_options(args: argparse.Namespace) -> None:
    """The options a sweep over several processes cannot take (ValueError naming the option)."""
    if args.no_store:
        raise ValueError("--no-store: the processes of a sweep share their work through the results store")
    if args.device not in (None, "cpu", "cuda"):
        raise ValueError(f"--device {args.device}: with several processes each takes cuda:<local rank>; "
                         "pass --device cuda or --device cpu (or leave it out)")
    if getattr(args, "device_map", None) is not None:
        raise ValueError("--device-map: with several processes each process holds its engine on its own GPU; "
                         "a model spread over several GPUs is swept by one process (without --processes)")


def _sweep_process(args: argparse.Namespace) -> int:
    """One of the processes of a launched sweep (module docstring)."""
    from msa_core.eval.distributed import PLAN_ENV, join_process_group, rank_store_path, run_sweep_share
    from msa_core.eval.run import ReferenceCache
    from msa_core.eval.store import ResultStore, results_grid
    from msa_core.paths import default_results_path

    _check_process_options(args)
    experiment, alphas, betas = _grids(args)
    columns = _columns(args)
    group = join_process_group(args.device)
    # No try/finally around the collectives: a process that fails must exit at once (torchrun then
    # stops the others), not wait in a collective call for processes that wait for it.
    engine_args = argparse.Namespace(**vars(args))
    engine_args.device = group.device
    if not group.is_main:
        engine_args.quiet = True  # one progress bar: the main process's
    engine = load_engine(engine_args, experiment)
    if group.device == "cpu" and requested_threads(args) is None:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // group.local_count))
    base = Path(args.store).expanduser() if args.store else default_results_path()
    per_rank = bool(args.store_per_rank) or group.multi_node
    if per_rank:
        store = ResultStore(rank_store_path(base, group.index))
        also = [ResultStore(base)] if base.is_file() else []
    else:
        store, also = ResultStore(base), []
    plan = os.environ.get(PLAN_ENV)
    results = run_sweep_share(
        engine, store, [(a, b) for a in alphas for b in betas], group, shared_store=not per_rank,
        also_read=also, tier=args.tier, benchmark=args.benchmark, subset=args.subset,
        progress=progress_for(engine_args), on_point=_point_printer(args, f"[{group.label()}] "),
        batch_size=args.batch_size, reference_cache=ReferenceCache(), plan_file=Path(plan) if plan else None)
    group.close()
    if not group.is_main:
        return 0
    if per_rank:
        note(args, f"{group.count} per-rank stores next to {base} ({rank_store_path(base, 0).name} …); "
                   f"combine them with: msa results --merge {base.parent}/{base.stem}.rank*.sqlite --into {base}")
    emit(args.json, [r.to_json() for r in results], lambda: print_table(results_grid(results), columns=columns))
    return 0


def _launch_sweep(args: argparse.Namespace) -> int:
    """``msa sweep --processes N``: start N processes of this sweep on this host and wait for them."""
    from msa_core.eval.distributed import free_port, launch_command, launch_env, read_plan

    _check_process_options(args)
    raw = getattr(args, "_sweep_argv", None)
    if raw is None:
        raise ValueError("--processes: this sweep's command line is unknown (call msa_core.cli.main with argv)")
    _grids(args)  # bad grids and experiment files answer before any process starts
    if args.device != "cpu":
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if gpus and args.processes > gpus:
            raise ValueError(f"--processes {args.processes}: this host has {gpus} GPU(s); "
                             "start at most one process per GPU (or pass --device cpu)")
    lead = (["-v"] if getattr(args, "verbose", False) else []) + \
        (["--threads", str(args.global_threads)] if getattr(args, "global_threads", None) is not None else [])
    with tempfile.TemporaryDirectory(prefix="msa-sweep-") as tmp:
        plan_file = Path(tmp) / "plan.json"
        cmd = launch_command(args.processes, [*lead, "sweep", *raw], port=free_port())
        note(args, f"starting {args.processes} processes: {' '.join(cmd)}")
        rc = subprocess.run(cmd, env=launch_env(plan_file), check=False).returncode
        plan = read_plan(plan_file)
    stored = None if plan is None else len(plan.stored())
    if plan is not None:
        note(args, f"{stored} of {len(plan.points)} grid point(s) stored in {', '.join(plan.stores)}")
    if rc != 0:
        done = "" if plan is None else f"; {stored} of {len(plan.points)} grid point(s) are stored"
        print(f"msa sweep: a process failed (exit status {rc}){done}; run the same command again to finish "
              "the grid", file=sys.stderr)
        return 1
    return 0


def _sweep_here(args: argparse.Namespace) -> int:
    from msa_core.eval.run import ReferenceCache
    from msa_core.eval.store import ResultStore
    from msa_core.eval.sweep import run_sweep

    experiment, alphas, betas = _grids(args)
    columns = _columns(args)
    engine = load_engine(args, experiment)
    if args.no_store:  # a sweep resumes through a store: use a throw-away one
        store = ResultStore(Path(tempfile.mkdtemp(prefix="msa-sweep-")) / "results.sqlite")
    else:
        store = _open_store(args.store)

    results = run_sweep(engine, store, alphas, betas, tier=args.tier, benchmark=args.benchmark, subset=args.subset,
                        progress=progress_for(args), on_point=_point_printer(args), batch_size=args.batch_size,
                        reference_cache=ReferenceCache())
    grid = store.grid(engine.fingerprint, tier=args.tier, settings_key=results[0].settings_key)
    emit(args.json, [r.to_json() for r in results], lambda: print_table(grid, columns=columns))
    return 0


def _process_count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n}: at least 1 process")
    return n


def _columns(args: argparse.Namespace) -> Optional[list[str]]:
    """``--columns`` as a list of metric names (None when not given); ValueError naming unknown ones."""
    raw = getattr(args, "columns", None)
    if not raw:
        return None
    names = [c.strip() for c in raw.split(",") if c.strip()]
    unknown = [c for c in names if c not in METRIC_INFO]
    if unknown or not names:
        raise ValueError(f"--columns: unknown metric(s) {', '.join(unknown) or repr(raw)}; "
                         f"known: {', '.join(METRIC_ORDER)}")
    return names


def cmd_results(args: argparse.Namespace) -> int:
    from msa_core.experiment import load_experiment

    if args.merge:
        return _merge(args)
    if args.into:
        raise ValueError("--into: only with --merge")
    if not args.experiment:
        raise ValueError("msa results needs an experiment file (or --merge STORE …)")
    columns = _columns(args)
    experiment = chosen_experiment(args, load_experiment(args.experiment))
    from msa_core.fingerprints import experiment_fingerprint  # torch: after the checks above

    fp = experiment_fingerprint(experiment)
    store = _open_store(args.store)
    stored = store.results(fp, tier=args.tier)
    grid = store.grid(fp, tier=args.tier)

    def human() -> None:
        print(f"{experiment.name}: {store.count(fp)} stored point(s) in {store.path}")
        print_table(grid, columns=columns, all_columns=args.all_columns)

    emit(args.json, [r.to_json() for r in stored], human)
    return 0


def _merge(args: argparse.Namespace) -> int:
    """``msa results --merge A.sqlite B.sqlite … [--into STORE]``: combine stores (per-rank ones)."""
    from msa_core.eval.store import ResultStore
    from msa_core.paths import default_results_path

    if args.experiment:
        raise ValueError(f"--merge takes store files, not an experiment ({args.experiment}); "
                         "list every store after --merge")
    into = Path(args.into or args.store or default_results_path()).expanduser()
    sources = [Path(s).expanduser() for s in dict.fromkeys(args.merge)]
    for src in sources:  # every file is checked before anything is written
        if not src.is_file():
            raise FileNotFoundError(f"--merge {src}: no such file")
        if into.exists() and src.resolve() == into.resolve():
            raise ValueError(f"--merge {src}: this is the --into store itself")
    target = ResultStore(into)
    reports = [target.merge_from(src) for src in sources]
    payload = {"into": str(into), "rows": target.count(), "sources": [
        {"source": str(r.source), "rows": r.rows, "added": r.added, "same": r.same, "replaced": r.replaced,
         "kept": r.kept, "conflicts": [list(k) for k in r.conflicts]} for r in reports]}

    def human() -> None:
        for r in reports:
            print(r.describe())
        added = sum(r.added + r.replaced for r in reports)
        print(f"{into}: {added} row(s) written, {target.count()} row(s) in all")

    emit(args.json, payload, human)
    return 0


def record_argv(parser: argparse.ArgumentParser) -> None:
    """Keep the command line a subcommand parser parsed (as ``args._sweep_argv``), so
    ``msa sweep --processes N`` can hand the very same arguments to its processes."""
    parse_known = parser.parse_known_args

    def recording(args: Optional[Sequence[str]] = None, namespace: Optional[argparse.Namespace] = None,
                  ) -> tuple[argparse.Namespace, list[str]]:
        parsed, rest = parse_known(args, namespace)
        parsed._sweep_argv = list(sys.argv[1:] if args is None else args)
        return parsed, rest

    parser.parse_known_args = recording  # type: ignore[method-assign]


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
    p.add_argument("--columns", default=None, metavar="M1,M2",
                   help="metrics in the final table (default: the tier's compact set)")
    p.add_argument("--processes", type=_process_count, default=1, metavar="N",
                   help="split the grid over N processes on this host, one per GPU (cuda:0 … cuda:N-1) or "
                        "N CPU processes with --device cpu, started through accelerate launch (default 1); "
                        "on several hosts run `accelerate launch … -m msa_core sweep …` on each instead")
    p.add_argument("--store-per-rank", action="store_true",
                   help="each process writes <store>.rank<R>.sqlite (automatic when the processes span several "
                        "hosts); combine them with msa results --merge")
    add_output_args(p)
    p.set_defaults(func=cmd_sweep)
    record_argv(p)

    p = sub.add_parser("results", help="stored results of an experiment (table or JSON), or merge stores")
    p.add_argument("experiment", nargs="?", default=None, help="experiment YAML file (not with --merge)")
    p.add_argument("--merge", nargs="+", default=None, metavar="STORE",
                   help="copy these stores' rows (e.g. a sweep's per-rank stores) into --into; merging twice "
                        "adds nothing, and where two rows of one point differ the newest is kept (and reported)")
    p.add_argument("--into", default=None, metavar="STORE",
                   help="the store --merge writes into (default: --store, else cache/results.sqlite)")
    p.add_argument("--tier", choices=("fast", "full"), default=None, help="only this tier (default: each, in turn)")
    p.add_argument("--store", default=None, help="results database (default: cache/results.sqlite)")
    add_choice_args(p)
    shown = p.add_mutually_exclusive_group()
    shown.add_argument("--columns", default=None, metavar="M1,M2",
                       help="metrics to show, by name (e.g. forget_quality,retain_rouge; default: the tier's "
                            "compact set: " + "; ".join(f"{t}: {', '.join(c)}" for t, c in COMPACT_COLUMNS.items())
                            + ")")
    shown.add_argument("--all-columns", action="store_true", help="every metric that has a value")
    add_output_args(p)
    p.set_defaults(func=cmd_results)
