"""Figures 1 and 2: recompose bandwidth against plain ``copy_``, and the live engine against
the naive path (load the four checkpoints and merge into a fresh model on every move).

    python bench/recompose.py                      # both figures: demo + 1B-shaped, fp32 + bf16, CPU
    python bench/recompose.py bandwidth --model 1b --dtype bfloat16 --device cuda
    python bench/recompose.py naive --model demo
    options: --device cpu|cuda  --dtype float32 --dtype bfloat16  --threads N  --layers N
             --reps N  --experiment PATH (instead of the demo)  --compile  --no-json

Bytes moved are counted as the minimum traffic of one move: read θ_c (model dtype), τ_f and
τ_r (fp32), write w (model dtype) = N·(2·e + 8) bytes for N parameters of e bytes. The
copy baseline copies exactly those buffers (θ_c → w and τ_f → τ_r; τ_r is restored after
on a real experiment), so it moves the same counted bytes and the ratio is
copy_time / compose_time. "passes" is the traffic each strategy actually generates
(e.g. the previous foreach engine: copy + one add per term = 32 B/param in fp32).

The 1B-shaped model (``bench/synthetic.py``) is held in a fresh subprocess per
configuration; the strategies compared with the engine, among them the retired engine kept
as a named baseline, are in ``bench/baselines.py``. (This file is ~450 lines because both
figures share one subprocess protocol and one driver; splitting them would duplicate it.)
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import torch
from _common import (
    REPO,
    ROLES,
    demo_experiment_path,
    machine_info,
    machine_line,
    paired,
    set_threads,
    sync,
    table,
    timed,
    write_json,
)
from baselines import (
    PREVIOUS_ENGINE,
    PYTHON_LOOP,
    compiled,
    eager_engine,
    passes_bytes,
    previous_engine,
    python_loop,
    sliced_copy,
)
from synthetic import NAIVE_DIR, ONE_B_LAYERS, make_1b_checkpoints, one_b_params, synthetic_engine

# ----------------------------------------------------------------------------- workers


def available_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024**2
    return float("inf")


def _check_memory(need_gib: float, what: str) -> None:
    avail = available_gib()
    if need_gib > avail - 1.5:
        raise SystemExit(f"{what} needs ~{need_gib:.1f} GiB, only {avail:.1f} GiB available: use fewer --layers")


def bandwidth_worker(cfg: dict[str, Any]) -> dict[str, Any]:
    set_threads(cfg["threads"])
    dtype = getattr(torch, cfg["dtype"])
    device = cfg["device"]
    t0 = time.perf_counter()
    if cfg["model"] == "1b":
        e = torch.empty((), dtype=dtype).element_size()
        n = one_b_params(cfg["layers"])
        if device == "cpu":
            _check_memory(
                n * (2 * e + 8) / 1024**3 + 1.0, f"the 1B-shaped set ({cfg['layers']} layers, {cfg['dtype']})"
            )
        engine = synthetic_engine(cfg["layers"], dtype, device)
        restore = None
    else:
        from msa_core.engine import Engine
        from msa_core.experiment import load_experiment

        engine = Engine.load(load_experiment(demo_experiment_path(cfg.get("experiment"))), device=device, dtype=dtype)
        restore = [t.clone() for t in engine.plan.tau_r]
    build_s = time.perf_counter() - t0
    P, B, F, R = engine.plan.params, engine.plan.pristine, engine.plan.tau_f, engine.plan.tau_r
    n = engine.plan.elements
    e = P[0].element_size()
    min_bytes = engine.plan.bytes_per_move
    rng = random.Random(0)
    lo_a, hi_a = engine.experiment.alpha_range
    lo_b, hi_b = engine.experiment.beta_range

    def coeffs() -> tuple[float, float]:
        return rng.uniform(max(lo_a, 0.1), hi_a), rng.uniform(max(lo_b, 0.1), hi_b)

    def copy_baseline() -> None:
        with torch.no_grad():
            torch._foreach_copy_(P, B)
            torch._foreach_copy_(R, F)

    t0 = time.perf_counter()
    engine.set_coefficients(*coeffs())  # the first move (compiles the fused kernel where it is used)
    sync(device)
    first_move_s = time.perf_counter() - t0
    engine_path = engine.compose_path
    strategies: dict[str, Callable[[float, float], None]] = {
        f"engine ({engine_path})": lambda a, b: engine.set_coefficients(a, b)
    }
    if engine_path.startswith("fused"):
        strategies["engine, eager path (MSA_FUSED_COMPOSE=0)"] = eager_engine(engine)
    wanted = cfg["strategies"]
    if "previous" in wanted:
        strategies[PREVIOUS_ENGINE] = previous_engine(engine)
    if "python" in wanted:
        strategies[PYTHON_LOOP] = python_loop(engine)
    compile_s = None
    if cfg.get("compile"):
        strategies["torch.compile fused kernel (not in engine)"], compile_s = compiled(engine)

    # Correctness first: the engine against the previous whole-tensor implementation: bit for
    # bit on the eager path; the fused kernel may differ by one unit in the last place.
    exact = None
    if "previous" in wanted:
        a, b = 1.7, 0.9
        engine.set_coefficients(a, b)
        idx = (
            range(len(P))
            if cfg["model"] != "1b"
            else sorted({0, len(P) - 1, max(range(len(P)), key=lambda i: P[i].numel())})
        )
        snap = {i: P[i].clone() for i in idx}
        strategies[PREVIOUS_ENGINE](a, b)
        if all(torch.equal(P[i], snap[i]) for i in idx):
            exact = "bit-exact"
        else:
            if e == 2:
                ulps = max(
                    int((P[i].view(torch.int16).int() - snap[i].view(torch.int16).int()).abs().max()) for i in idx
                )
                exact = f"differs by at most {ulps} ulp"
            else:
                rel = max(
                    float(
                        (P[i].double() - snap[i].double()).abs().max() / snap[i].double().abs().max().clamp(min=1e-30)
                    )
                    for i in idx
                )
                exact = f"differs by at most {rel:.1e} of the tensor's max"
        del snap
        engine.set_coefficients(0.0, 0.0)

    calls = {name: (lambda fn=fn: fn(*coeffs())) for name, fn in strategies.items()}
    if torch.device(device).type == "cpu":
        calls["copy, sliced + threaded like the engine (2nd baseline)"] = sliced_copy(engine)
    if restore is not None:
        for t, s in zip(R, restore):
            t.copy_(s)
    timings = paired(copy_baseline, calls, reps=cfg["reps"], device=device)
    if restore is not None:  # the copy baseline overwrote τ_r; put it back before anyone uses the engine
        for t, s in zip(R, restore):
            t.copy_(s)
    copy_s = min(v["baseline_seconds"] for v in timings.values())
    best_copy_s = min([copy_s] + [v["seconds"] for k, v in timings.items() if k.startswith("copy,")])
    rows = []
    full_n = one_b_params(ONE_B_LAYERS) if cfg["model"] == "1b" else n
    for name, t in timings.items():
        pb = passes_bytes(name, e, torch.device(device).type)
        rows.append(
            {
                "strategy": name,
                "ratio_vs_copy": t["ratio"],
                "ratio_range": f"{t['ratio_min']:.2f}-{t['ratio_max']:.2f}",
                "ratio_vs_best_copy": best_copy_s / t["seconds"],
                "seconds": t["seconds"],
                "GB/s_min_traffic": min_bytes / t["seconds"] / 1e9,
                "passes_B_per_param": pb,
                "GB/s_passes": n * pb / t["seconds"] / 1e9,
                "seconds_full_1b": t["seconds"] * full_n / n if cfg["model"] == "1b" else None,
            }
        )
    return {
        "config": cfg,
        "params": n,
        "full_params": full_n,
        "bytes_per_move_min": min_bytes,
        "copy_seconds": copy_s,
        "copy_GB/s": min_bytes / copy_s / 1e9,
        "best_copy_seconds": best_copy_s,
        "build_seconds": build_s,
        "bit_exact_vs_previous": exact,
        "compose_path": engine_path,
        "first_move_seconds": first_move_s,
        "compile_seconds": compile_s,
        "rows": rows,
    }


def naive_worker(cfg: dict[str, Any]) -> dict[str, Any]:
    """Per move: load clean/corrupted/forget/retain from disk, merge in the model dtype into the
    freshly loaded corrupted model (what the reference script does for each (α, β))."""
    from msa_core.checkpoints import load_model

    set_threads(cfg["threads"])
    dtype = getattr(torch, cfg["dtype"])
    device = cfg["device"]
    if cfg["model"] == "1b":
        e = torch.empty((), dtype=dtype).element_size()
        if device == "cpu":
            _check_memory(4.3 * one_b_params(cfg["layers"]) * e / 1024**3, "the naive path (four 1B-shaped models)")
        t0 = time.perf_counter()
        root = make_1b_checkpoints(cfg["layers"], dtype)
        setup_s = time.perf_counter() - t0
        folders = {r: root / r for r in ROLES}
        ranges = ((0.0, 5.0), (0.0, 5.0))
    else:
        from msa_core.experiment import load_experiment

        exp = load_experiment(demo_experiment_path(cfg.get("experiment")))
        folders = {r: getattr(exp.checkpoints, r) for r in ROLES}
        ranges = (exp.alpha_range, exp.beta_range)
        setup_s = 0.0
    rng = random.Random(1)

    @torch.no_grad()
    def move() -> Any:
        a = rng.uniform(max(ranges[0][0], 0.1), ranges[0][1])
        b = rng.uniform(max(ranges[1][0], 0.1), ranges[1][1])
        models = {r: load_model(folders[r], device=device, dtype=dtype) for r in ROLES}
        sd = {r: dict(m.named_parameters()) for r, m in models.items()}
        for name, p in sd["corrupted"].items():
            z = sd["clean"][name]
            p.copy_(p - a * (sd["forget"][name] - z) + b * (sd["retain"][name] - z))
        return models["corrupted"]

    times = []
    for _ in range(cfg["moves"]):
        gc.collect()
        t = timed(lambda: move(), device)
        times.append(t)
    times.sort()
    return {"config": cfg, "setup_seconds": setup_s, "naive_seconds": times, "naive_median": times[len(times) // 2]}


# ----------------------------------------------------------------------------- driver


def run_worker(kind: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """Run a worker in a fresh subprocess (isolated memory); returns its JSON result."""
    cmd = [sys.executable, str(Path(__file__).resolve()), f"_{kind}", json.dumps(cfg)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return {"config": cfg, "error": " / ".join(tail)}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def default_layers(model: str, dtype: str, device: str, explicit: Optional[int]) -> int:
    if explicit:
        return explicit
    if device == "cpu" and dtype == "float32":
        return 8  # 1B-shaped fp32 needs ~17.6 GB in full; 8 of 22 layers keeps it under ~8 GB
    return ONE_B_LAYERS


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("_bandwidth", "_naive"):
        cfg = json.loads(argv[1])
        out = bandwidth_worker(cfg) if argv[0] == "_bandwidth" else naive_worker(cfg)
        print(json.dumps(out, default=str))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("figure", nargs="?", default="all", choices=["all", "bandwidth", "naive"])
    ap.add_argument("--model", action="append", choices=["demo", "1b"], help="default: both")
    ap.add_argument("--dtype", action="append", help="default: float32 and bfloat16 (bfloat16 only on cuda)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default min(2, nproc))")
    ap.add_argument(
        "--layers", type=int, default=None, help="layers of the 1B-shaped model (default 22; 8 for fp32 on CPU)"
    )
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--moves", type=int, default=None, help="naive-path moves to time")
    ap.add_argument("--experiment", default=None, help="an experiment.yaml instead of the demo")
    ap.add_argument("--compile", action="store_true", help="also time a torch.compile fused kernel")
    ap.add_argument("--keep", action="store_true", help="keep the 1B-shaped checkpoints written for the naive path")
    ap.add_argument(
        "--background-load",
        type=int,
        default=0,
        help="run N CPU-bound busy loops meanwhile (robustness against a shared machine)",
    )
    ap.add_argument("--no-json", action="store_true")
    args = ap.parse_args(argv)
    models = args.model or ["demo", "1b"]
    dtypes = args.dtype or (["bfloat16"] if args.device.startswith("cuda") else ["float32", "bfloat16"])
    threads = set_threads(args.threads)
    info = machine_info()
    print(machine_line(info))
    results: dict[str, Any] = {"machine": info, "bandwidth": [], "naive": [], "background_load": args.background_load}
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.background_load)]
    try:
        _figures(args, models, dtypes, threads, results)
    finally:
        for b in burners:
            b.kill()
            b.wait()
    if not args.no_json:
        name = (
            f"recompose-{args.figure}-{'-'.join(models)}-{'-'.join(dtypes)}-{args.device}-t{threads}"
            + ("-compile" if args.compile else "")
            + (f"-bg{args.background_load}" if args.background_load else "")
        )
        print(f"\nJSON: {write_json(name, results)}")
    return 0


def _figures(
    args: argparse.Namespace, models: list[str], dtypes: list[str], threads: int, results: dict[str, Any]
) -> None:
    if args.background_load:
        print(f"(with {args.background_load} competing CPU-bound process(es) running)")

    if args.figure in ("all", "bandwidth"):
        for model in models:
            for dtype in dtypes:
                layers = default_layers(model, dtype, args.device, args.layers)
                cfg = dict(
                    model=model,
                    dtype=dtype,
                    device=args.device,
                    threads=threads,
                    layers=layers,
                    reps=args.reps or (3 if model == "1b" else 7),
                    experiment=args.experiment,
                    compile=args.compile,
                    strategies=["previous", "python"]
                    if not (model == "1b" and dtype != "float32" and args.device == "cpu")
                    else ["previous"],
                )
                res = run_worker("bandwidth", cfg)
                results["bandwidth"].append(res)
                label = f"{model}{f' ({layers} layers)' if model == '1b' else ''} {dtype} {args.device}"
                if "error" in res:
                    print(f"\n[{label}] FAILED: {res['error']}")
                    continue
                print(
                    f"\n[{label}] {res['params'] / 1e6:.1f}M params, "
                    f"{res['bytes_per_move_min'] / 1e9:.2f} GB per move (min traffic); "
                    f"copy {res['copy_seconds']:.3f} s = {res['copy_GB/s']:.1f} GB/s; "
                    f"vs previous engine: {res['bit_exact_vs_previous']}; "
                    f"first move {res['first_move_seconds']:.2f} s"
                    + (f"; compile {res['compile_seconds']:.1f} s" if res.get("compile_seconds") else "")
                )
                cols = [
                    "strategy",
                    "ratio_vs_copy",
                    "ratio_range",
                    "ratio_vs_best_copy",
                    "seconds",
                    "GB/s_min_traffic",
                    "passes_B_per_param",
                    "GB/s_passes",
                ]
                if model == "1b" and layers != ONE_B_LAYERS:
                    cols.append("seconds_full_1b")
                print(table(res["rows"], cols))

    if args.figure in ("all", "naive"):
        rows = []
        for model in models:
            dtype = "bfloat16" if model == "1b" else (args.dtype[0] if args.dtype else "float32")
            layers = default_layers(model, dtype, args.device, args.layers)
            match = [
                r
                for r in results["bandwidth"]
                if "error" not in r
                and r["config"]["model"] == model
                and r["config"]["dtype"] == dtype
                and r["config"]["layers"] == layers
            ]
            if match:
                eng = match[0]
            else:
                eng = run_worker(
                    "bandwidth",
                    dict(
                        model=model,
                        dtype=dtype,
                        device=args.device,
                        threads=threads,
                        layers=layers,
                        reps=args.reps or 5,
                        experiment=args.experiment,
                        compile=False,
                        strategies=[],
                    ),
                )
            nv = run_worker(
                "naive",
                dict(
                    model=model,
                    dtype=dtype,
                    device=args.device,
                    threads=threads,
                    layers=layers,
                    moves=args.moves or (2 if model == "1b" else 5),
                    experiment=args.experiment,
                ),
            )
            results["naive"].append({"engine": eng.get("rows"), "naive": nv})
            if "error" in eng or "error" in nv:
                print(f"\n[naive {model}] FAILED: {eng.get('error') or nv.get('error')}")
                continue
            eng_s = next(r["seconds"] for r in eng["rows"] if r["strategy"].startswith("engine ("))
            rows.append(
                {
                    "model": f"{model} ({eng['params'] / 1e6:.1f}M, {dtype})",
                    "engine_s_per_move": eng_s,
                    "naive_s_per_move": nv["naive_median"],
                    "speedup": nv["naive_median"] / eng_s,
                    "naive_moves": len(nv["naive_seconds"]),
                }
            )
        if rows:
            print("\n[engine vs naive path, per slider move]")
            print(table(rows))
        results["naive_table"] = rows
        if "1b" in models and not args.keep:
            shutil.rmtree(NAIVE_DIR, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
