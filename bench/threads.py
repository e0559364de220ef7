"""Threads: the thread policy (msa_core/threads.py) against torch's default, idle and loaded.

    python bench/threads.py [--experiment PATH] [--moves 6] [--eval-reps 2] [--competitors 1]
                            [--sizes 25M,110M] [--no-json]

On the demo (the full demo when built, else the quick one, built if missing; MSA_CACHE_DIR
picks the cache), in one run, under two conditions — **idle** (nothing else started by this
script) and **loaded** (``--competitors`` CPU-bound processes, ``while True: pass``, each
ending by itself at a deadline) — and for two thread settings, interleaved move by move so
that a change in background load hits both:

- **policy**: :func:`msa_core.threads.policy_threads` for the demo model's size;
- **default**: torch's own default for this process (``torch.get_num_threads()`` at start).

Timed: slider-to-answers (compose at a random (α, β) + greedy answers to 4 forget
questions, the Playground's move; p50/p95 over ``--moves``) and a fast-tier evaluation at
(1, 0.5) with the reference's numbers cached (the app's "Compute metrics" after the first;
median over ``--eval-reps``). Reported: seconds per setting and default ÷ policy (> 1: the
policy is faster).

``--sizes`` adds random-weight Llama models of those sizes (no download): a scoring forward
(16 × 64 tokens) and a greedy generation (4 prompts × 24 tokens) at 1 thread and at one per
physical core, idle and loaded — where the size rule's crossover lies on this machine.

Bounded: about 2–3 minutes on 2 cores with the defaults (most of it the default setting
under load); ``--sizes`` adds about a minute per size. Run it on an otherwise quiet machine.
"""

from __future__ import annotations

import argparse
import functools
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Optional

import torch
from _common import demo_experiment_path, machine_info, machine_line, percentile, table, write_json

# torch's default for this process, read before anything here sets a count.
TORCH_DEFAULT = torch.get_num_threads()

# Random-weight Llama shapes for --sizes: name → (hidden, layers, intermediate, vocab, heads).
SIZES = {
    "5M": (256, 4, 704, 4096, 4),
    "25M": (512, 6, 1408, 8192, 8),
    "110M": (768, 12, 2048, 32000, 12),
    "350M": (1024, 24, 2816, 32000, 16),
}
# A competitor outlives a hung benchmark by at most this long.
_COMPETITOR_SECONDS = 900


@contextmanager
def competitors(n: int) -> Iterator[list[subprocess.Popen]]:
    """``n`` CPU-bound processes for the body's duration (each also stops by itself after
    _COMPETITOR_SECONDS); none when ``n`` is 0."""
    code = f"import time\nend = time.time() + {_COMPETITOR_SECONDS}\nwhile time.time() < end:\n    pass\n"
    procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(n)]
    try:
        time.sleep(0.5 if n else 0.0)  # let them get on a core
        yield procs
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def demo_section(args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from msa_core.engine import Engine
    from msa_core.eval.data import load_tofu_split
    from msa_core.eval.run import ReferenceCache, evaluate
    from msa_core.experiment import load_experiment
    from msa_core.generation import generate_answers
    from msa_core.threads import policy_threads

    exp_path = demo_experiment_path(args.experiment)
    exp = load_experiment(exp_path)
    engine = Engine.load(exp, device="cpu")
    policy = policy_threads(engine.parameter_count)  # the size rule alone (MSA_THREADS is not consulted)
    settings = {"policy": policy.threads, "default": TORCH_DEFAULT}
    qs = [it.question for it in list(load_tofu_split(exp.data.tofu, exp.data.forget_split).items)[: args.questions]]
    cache = ReferenceCache()

    def move(a: float, b: float) -> None:
        with engine.session(a, b) as m:
            generate_answers(m, engine.tokenizer, qs, max_new_tokens=args.max_new_tokens)

    def evaluation() -> None:
        evaluate(engine, 1.0, 0.5, tier="fast", store=None, reference_cache=cache)

    torch.set_num_threads(settings["policy"])
    evaluation()  # warms the reference cache (the app's first "Compute metrics" pays it once)
    move(0.5, 0.5)
    rng = random.Random(0)
    (a_lo, a_hi), (b_lo, b_hi) = exp.alpha_range, exp.beta_range
    rows: list[dict[str, Any]] = []
    raw: dict[str, Any] = {}
    for condition, n in (("idle", 0), ("loaded", args.competitors)):
        with competitors(n):
            load_before = os.getloadavg()[0]
            moves: dict[str, list[float]] = {k: [] for k in settings}
            evals: dict[str, list[float]] = {k: [] for k in settings}
            for i in range(args.moves):
                a, b = round(rng.uniform(a_lo, a_hi), 2), round(rng.uniform(b_lo, b_hi), 2)
                order = list(settings) if i % 2 == 0 else list(settings)[::-1]
                for name in order:
                    torch.set_num_threads(settings[name])
                    moves[name].append(timed(functools.partial(move, a, b)))
            for i in range(args.eval_reps):
                order = list(settings) if i % 2 == 0 else list(settings)[::-1]
                for name in order:
                    torch.set_num_threads(settings[name])
                    evals[name].append(timed(evaluation))
            load_after = os.getloadavg()[0]
        raw[condition] = {"moves": moves, "evals": evals, "loadavg_1min": [load_before, load_after]}
        for name, threads in settings.items():
            rows.append({
                "condition": condition, "setting": name, "threads": threads,
                "slider p50 s": percentile(moves[name], 50), "slider p95 s": percentile(moves[name], 95),
                "fast eval s": statistics.median(evals[name]),
                "default/policy slider": (percentile(moves["default"], 50) / percentile(moves["policy"], 50)
                                          if name == "policy" else None),
                "default/policy eval": (statistics.median(evals["default"]) / statistics.median(evals["policy"])
                                        if name == "policy" else None),
            })
        print(f"  {condition}: done (load {load_before:.1f} → {load_after:.1f})", flush=True)
    info = {"experiment": str(exp_path), "params": engine.parameter_count, "policy": policy.describe(),
            "settings": settings, "questions": qs,
            "max_new_tokens": args.max_new_tokens, "raw": raw}
    return rows, info


def _llama(spec: tuple[int, int, int, int, int]) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, layers, inter, vocab, heads = spec
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=256)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


def _forward(model: Any, ids: torch.Tensor) -> None:
    with torch.no_grad():
        model(ids)


def _generate(model: Any, prompts: torch.Tensor) -> None:
    with torch.no_grad():
        model.generate(prompts, max_new_tokens=24, min_new_tokens=24, do_sample=False, pad_token_id=0)


def sizes_section(args: argparse.Namespace, cores: int) -> list[dict[str, Any]]:
    names = [s.strip() for s in args.sizes.split(",") if s.strip()]
    unknown = [s for s in names if s not in SIZES]
    if unknown:
        raise SystemExit(f"--sizes: unknown {unknown}; known: {', '.join(SIZES)}")
    counts = sorted({1, cores})
    rows = []
    for name in names:
        model = _llama(SIZES[name])
        params = sum(p.numel() for p in model.parameters())
        work = {"forward": functools.partial(_forward, model, torch.randint(3, 1000, (16, 64))),
                "generate": functools.partial(_generate, model, torch.randint(3, 1000, (4, 16)))}
        for condition, n in (("idle", 0), ("loaded", args.competitors)):
            with competitors(n):
                times: dict[tuple[str, int], list[float]] = {}
                for rep in range(3):
                    for t in counts if rep % 2 == 0 else counts[::-1]:
                        torch.set_num_threads(t)
                        for what, fn in work.items():
                            times.setdefault((what, t), []).append(timed(fn))
            for what in ("forward", "generate"):
                med = {t: statistics.median(times[(what, t)][1:]) for t in counts}  # first rep: warm-up
                rows.append({"model": f"{name} ({params / 1e6:.1f}M params)", "condition": condition, "work": what,
                             **{f"{t} thr s": med[t] for t in counts},
                             f"1 thr / {cores} thr": med[1] / med[cores] if cores != 1 else 1.0})
        print(f"  {name}: done", flush=True)
        del model, work
    return rows


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experiment", default=None, help="experiment YAML (default: the demo, see _common.py)")
    ap.add_argument("--moves", type=int, default=6, help="slider moves per setting and condition")
    ap.add_argument("--questions", type=int, default=4, help="questions answered per move (the Playground's 4)")
    ap.add_argument("--max-new-tokens", type=int, default=48, help="the Playground's default")
    ap.add_argument("--eval-reps", type=int, default=2, help="fast-tier evaluations per setting and condition")
    ap.add_argument("--competitors", type=int, default=1, help="CPU-bound processes in the loaded condition")
    ap.add_argument("--sizes", default="", help=f"also random Llama models: {', '.join(SIZES)} (comma list)")
    ap.add_argument("--no-json", action="store_true")
    args = ap.parse_args(argv)

    from msa_core.threads import physical_cores

    info = machine_info()
    print(machine_line(info))
    t0 = time.perf_counter()
    cores = physical_cores()
    rows, demo = demo_section(args)
    print(f"\n[threads on {demo['experiment']} ({demo['params'] / 1e6:.2f}M params): policy = {demo['policy']}, "
          f"torch default = {TORCH_DEFAULT}; loaded = {args.competitors} competing CPU-bound process(es); "
          f"{args.moves} moves, {args.eval_reps} fast-tier evaluations per cell]")
    print(table(rows))
    size_rows = sizes_section(args, cores) if args.sizes else []
    if size_rows:
        print(f"\n[random-weight Llama models: forward 16×64 tokens, generate 4×24 tokens; {cores} physical cores]")
        print(table(size_rows))
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    if not args.no_json:
        payload = {"machine": info, "torch_default": TORCH_DEFAULT, "policy": demo["policy"],
                   "physical_cores": cores, "competitors": args.competitors, "demo": demo, "rows": rows,
                   "sizes": size_rows}
        print("JSON:", write_json("threads", payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
