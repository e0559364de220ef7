"""Figure 5: teacher-forced scoring throughput (batched vs one item at a time) and the wall
time of a TOFU evaluation of one (α, β) on the demo model.

    python bench/eval_throughput.py [--batch-sizes 16 32 64] [--reps 3] [--limit N] [--experiment PATH]
                                    [--device cuda --dtype bfloat16]

Data: TOFU forget10 with its paraphrased and five perturbed answers (400 questions → 2,800
question+answer sequences, what the forget-side truth ratio scores), from the real files
in ../shared/data/tofu when present, and the demo's own forget split (short sequences in
the demo tokenizer's own vocabulary). Scored with the demo's
model and tokenizer in the QA format (``encode_qa``) by ``msa_core.eval.scoring.score_pairs``
asking for what the TOFU metrics use (nll, token log-probs, argmax). Baseline: the same
sequences scored one at a time (a loop of ``score_pairs`` calls on single pairs), interleaved
with the batched runs. Sequences/s = sequences / wall seconds.

Then ``msa_core.eval.evaluate(engine, α, β, tier=..., benchmark="tofu")`` on the demo's own
data: the first call (which also evaluates the reference model once), then a second
(α, β) with the reference cached, for the "fast" and "full" tiers.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Optional

from _common import REPO, machine_info, machine_line, set_threads, table, timed, write_json
from recompose import demo_experiment_path

SHARED_TOFU = REPO.parent / "shared" / "data" / "tofu"


def tofu_pairs(tok: Any, folder: Path, split: str, limit: Optional[int]) -> list[tuple[list[int], list[int]]]:
    from msa_core.eval.data import load_tofu_split, perturbed_split_name
    from msa_core.prompts import encode_qa

    try:
        items = load_tofu_split(folder, perturbed_split_name(split)).items
    except FileNotFoundError:
        items = load_tofu_split(folder, split).items
    pairs = []
    for it in items[:limit] if limit else items:
        for ans in (it.answer, it.paraphrased_answer, *it.perturbed_answers):
            if ans:
                pairs.append(tuple(encode_qa(tok, it.question, ans)))
    return pairs


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 32])
    ap.add_argument(
        "--data",
        choices=["shared", "demo", "both"],
        default="both",
        help="real TOFU forget10 from ../shared/data/tofu and/or the demo's own forget split",
    )
    ap.add_argument("--single-call", action="store_true", help="also time one score_pairs call with batch_size=1")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--limit", type=int, default=None, help="questions to use (default: all 400)")
    ap.add_argument("--experiment", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--skip-evaluate", action="store_true")
    ap.add_argument("--no-json", action="store_true")
    args = ap.parse_args(argv)
    threads = set_threads(args.threads)
    info = machine_info()
    print(machine_line(info))

    from msa_core.engine import Engine
    from msa_core.eval.scoring import score_pairs
    from msa_core.experiment import load_experiment

    exp = load_experiment(demo_experiment_path(args.experiment))
    engine = Engine.load(exp, device=args.device, dtype=args.dtype)
    tok = engine.tokenizer
    want = ("nll", "token_logprobs", "argmax")
    engine.set_coefficients(*[min(1.0, hi) for _, hi in (exp.alpha_range, exp.beta_range)])
    model = engine.model
    sources = []
    if args.data in ("shared", "both") and (SHARED_TOFU / "forget10.json").is_file():
        sources.append(("real TOFU forget10", SHARED_TOFU, "forget10"))
    if args.data in ("demo", "both") or not sources:
        sources.append((f"{exp.name}'s {exp.data.forget_split}", exp.data.tofu, exp.data.forget_split))
    all_rows, meta = [], []
    for label, data_dir, split in sources:
        pairs = tofu_pairs(tok, data_dir, split, args.limit)
        lengths = [len(p) + len(c) for p, c in pairs]

        def one_at_a_time(pairs: list = pairs) -> None:
            for pr in pairs:
                score_pairs(model, tok, [pr], batch_size=1, want=want)

        candidates = {
            f"batched, batch_size={b}": (
                lambda b=b, pairs=pairs: score_pairs(model, tok, pairs, batch_size=b, want=want)
            )
            for b in args.batch_sizes
        }
        if args.single_call:
            candidates["one call, batch_size=1"] = lambda pairs=pairs: score_pairs(
                model, tok, pairs, batch_size=1, want=want
            )
        # Agreement check: batching must not change the scores.
        ref = score_pairs(model, tok, pairs[:64], batch_size=1).nll
        got = score_pairs(model, tok, pairs[:64], batch_size=max(args.batch_sizes)).nll
        max_diff = max(abs(a - b) for a, b in zip(ref, got))

        base_t: list[float] = []
        cand_t: dict[str, list[float]] = {k: [] for k in candidates}
        score_pairs(model, tok, pairs[:32], batch_size=1, want=want)  # warm-up
        for _ in range(args.reps):  # one baseline per rep, the candidates right after it
            base_t.append(timed(one_at_a_time, args.device))
            for name, fn in candidates.items():
                cand_t[name].append(timed(fn, args.device))
        n = len(pairs)
        tb = statistics.median(base_t)
        rows = [
            {
                "data": label,
                "method": "one at a time (loop of single-pair calls)",
                "seq_per_s": n / tb,
                "seconds": tb,
                "speedup": 1.0,
            }
        ]
        for name, ts in cand_t.items():
            rows.append(
                {
                    "data": label,
                    "method": name,
                    "seq_per_s": n / statistics.median(ts),
                    "seconds": statistics.median(ts),
                    "speedup": statistics.median(b / c for b, c in zip(base_t, ts)),
                }
            )
        print(
            f"\n[teacher-forced scoring, {label}: {n} sequences "
            f"(question + answer, paraphrased, perturbed; {data_dir}), "
            f"{statistics.median(lengths)} tokens median / {max(lengths)} max, "
            f"{engine.parameter_count / 1e6:.1f}M-param model, "
            f"{engine.dtype}, {args.device}, {threads} threads; max |Δnll| batched vs single = {max_diff:.2e}]"
        )
        print(table(rows))
        all_rows += rows
        meta.append(
            {
                "data": label,
                "folder": str(data_dir),
                "n_sequences": n,
                "median_tokens": statistics.median(lengths),
                "max_tokens": max(lengths),
                "max_abs_nll_diff": max_diff,
            }
        )

    evals = []
    if not args.skip_evaluate:
        from msa_core.eval.run import ReferenceCache, evaluate

        for tier in ("fast", "full"):
            cache = ReferenceCache()  # one per tier, so the first point's time includes the reference model
            t0 = time.perf_counter()
            evaluate(engine, 1.0, 0.5, tier=tier, benchmark="tofu", reference_cache=cache)
            first = time.perf_counter() - t0
            t0 = time.perf_counter()
            res = evaluate(engine, 2.0, 1.0, tier=tier, benchmark="tofu", reference_cache=cache)
            second = time.perf_counter() - t0
            evals.append(
                {
                    "tier": tier,
                    "first_s (incl. reference model)": first,
                    "next_point_s": second,
                    "metrics": len(res.metrics),
                }
            )
        print(
            f"\n[TOFU evaluation of one (α, β) on {exp.name}'s own data "
            f"({exp.data.forget_split} / {exp.data.retain_split} / {exp.data.holdout_split}), batch_size=16]"
        )
        print(table(evals))
    if not args.no_json:
        print(
            "JSON:",
            write_json(
                f"eval-throughput-{args.device}-t{threads}",
                {"machine": info, "params": engine.parameter_count, "data": meta, "rows": all_rows, "evaluate": evals},
            ),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
