"""Figure 3: slider-to-answers latency on the demo model (CPU by default).

    python bench/latency.py [--moves 20] [--questions 4] [--max-new-tokens 48] [--experiment PATH]

What the Playground does on a slider move: compose at (α, β) and generate greedy answers
for the unlearned column (the corrupted and reference columns are cached and not redone).
Timed per move: ``engine.session(α, β)`` (compose) + ``generate_answers`` for the questions,
over random (α, β) moves in the experiment's ranges; p50 and p95 reported. Baseline in the
same run: the naive path on the first few of the same moves (load the four checkpoints,
merge into a fresh model, then generate), compared move for move.
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import time
from typing import TYPE_CHECKING, Any, Optional

import torch
from _common import (
    ROLES,
    demo_experiment_path,
    machine_info,
    machine_line,
    percentile,
    set_threads,
    sync,
    table,
    write_json,
)

if TYPE_CHECKING:
    from msa_core.experiment import Experiment


def questions_for(exp: Experiment, n: int) -> list[str]:
    from msa_core.eval.data import load_tofu_split

    split = load_tofu_split(exp.data.tofu, exp.data.forget_split)
    items = list(split.items)[:n]
    return [it.question for it in items]


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--moves", type=int, default=20)
    ap.add_argument("--naive-moves", type=int, default=3)
    ap.add_argument("--questions", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=48, help="the Playground's default")
    ap.add_argument("--experiment", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-json", action="store_true")
    args = ap.parse_args(argv)
    threads = set_threads(args.threads)
    info = machine_info()
    print(machine_line(info))

    from msa_core.checkpoints import load_model
    from msa_core.engine import Engine
    from msa_core.experiment import load_experiment
    from msa_core.generation import generate_answers

    exp_path = demo_experiment_path(args.experiment)
    exp = load_experiment(exp_path)
    t0 = time.perf_counter()
    engine = Engine.load(exp, device=args.device)
    load_s = time.perf_counter() - t0
    tok = engine.tokenizer
    qs = questions_for(exp, args.questions)
    gen = lambda m: generate_answers(m, tok, qs, max_new_tokens=args.max_new_tokens)  # noqa: E731

    # The cached columns: computed once, as the app memoises them.
    t0 = time.perf_counter()
    with engine.session(0.0, 0.0) as m:
        corrupted = gen(m)
    ref_model = engine.side_model("reference")
    reference = gen(ref_model) if ref_model is not None else None
    cached_s = time.perf_counter() - t0

    rng = random.Random(0)
    (a_lo, a_hi), (b_lo, b_hi) = exp.alpha_range, exp.beta_range
    moves = [(round(rng.uniform(a_lo, a_hi), 2), round(rng.uniform(b_lo, b_hi), 2)) for _ in range(args.moves)]
    # warm-up move (first generate call pays one-off costs); not counted
    with engine.session(*moves[-1]) as m:
        gen(m)
    rows = []
    for a, b in moves:
        t0 = time.perf_counter()
        with engine.session(a, b) as m:
            sync(args.device)
            t1 = time.perf_counter()
            ans = gen(m)
            sync(args.device)
        t2 = time.perf_counter()
        rows.append(
            {
                "alpha": a,
                "beta": b,
                "compose": t1 - t0,
                "generate": t2 - t1,
                "total": t2 - t0,
                "tokens": sum(len(tok(x, add_special_tokens=False)["input_ids"]) for x in ans),
            }
        )

    folders = {r: getattr(exp.checkpoints, r) for r in ROLES}
    naive = []
    for row in rows[: args.naive_moves]:
        a, b = row["alpha"], row["beta"]
        gc.collect()
        t0 = time.perf_counter()
        with torch.no_grad():
            models = {r: load_model(folders[r], device=args.device, dtype=engine.dtype) for r in ROLES}
            sd = {r: dict(m.named_parameters()) for r, m in models.items()}
            for name, p in sd["corrupted"].items():
                z = sd["clean"][name]
                p.copy_(p - a * (sd["forget"][name] - z) + b * (sd["retain"][name] - z))
        sync(args.device)
        t1 = time.perf_counter()
        gen(models["corrupted"])
        sync(args.device)
        t2 = time.perf_counter()
        naive.append(
            {
                "alpha": a,
                "beta": b,
                "load_merge": t1 - t0,
                "generate": t2 - t1,
                "total": t2 - t0,
                "engine_total": row["total"],
                "engine_compose": row["compose"],
            }
        )
        del models, sd

    tot = [r["total"] for r in rows]

    def stats(what: str, xs: list[float]) -> dict[str, Any]:
        return {
            "what": what,
            "p50_s": percentile(xs, 50),
            "p95_s": percentile(xs, 95),
            "max_s": max(xs),
            "moves": len(xs),
        }

    summary = [
        stats("engine: compose + answers (unlearned column)", tot),
        stats("  of which compose (engine.session)", [r["compose"] for r in rows]),
        stats("  of which generate", [r["generate"] for r in rows]),
    ]
    if naive:
        summary += [
            stats("naive, same first moves: load 4 + merge + answers", [n["total"] for n in naive]),
            stats("  of which load 4 + merge", [n["load_merge"] for n in naive]),
            stats("engine on those same moves: compose + answers", [n["engine_total"] for n in naive]),
        ]
    print(
        f"\n[slider-to-answers, {exp.name} ({engine.parameter_count / 1e6:.1f}M params, {engine.dtype}, {args.device}, "
        f"{threads} threads), {len(qs)} questions, max_new_tokens={args.max_new_tokens}; engine load {load_s:.1f} s, "
        f"cached columns {cached_s:.2f} s]"
    )
    print(table(summary))
    if naive:
        per_move = [n["total"] / n["engine_total"] for n in naive]
        per_swap = [n["load_merge"] / n["engine_compose"] for n in naive]
        print(
            f"\nsame moves: naive/engine = {statistics.median(per_move):.1f}x end to end "
            "(generation is common to both), "
            f"{statistics.median(per_swap):.0f}x for getting the weights (load+merge vs compose)"
        )
    print(f"generated tokens per move (median): {statistics.median(r['tokens'] for r in rows)}")
    if not args.no_json:
        payload = {
            "machine": info,
            "experiment": str(exp_path),
            "params": engine.parameter_count,
            "questions": qs,
            "cached": {"corrupted": corrupted, "reference": reference},
            "moves": rows,
            "naive": naive,
            "summary": summary,
        }
        print("JSON:", write_json(f"latency-{args.device}-t{threads}", payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
