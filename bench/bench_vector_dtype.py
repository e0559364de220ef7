"""bf16 vs fp32 storage of τ_f, τ_r (``Engine.load(vector_dtype=…)``, ``--vector-dtype``):
the error it costs and the memory it saves.

    python bench/bench_vector_dtype.py                  # demo + 1B-shaped set + fast-tier metrics
    python bench/bench_vector_dtype.py --skip-metrics   # weights and memory only (a minute)
    options: --experiment PATH (instead of the demo)  --layers N (1B-shaped layers, default 2)
             --alpha A --beta B (default 1, 0.5)  --threads N  --no-json

Three measurements, each fp32 vectors against bf16 vectors (the model dtype and every other
setting unchanged; the compose computes in fp32 either way, only the storage of the vectors
narrows):

- demo: the demo experiment (``cache/demo`` when built, else ``cache/demo-quick``, built if
  missing; bench/_common.demo_experiment_path): max abs difference of the composed weights at
  (α, β), relative to max |τ|; the
  vectors' bytes on the device; and the process's RSS after ``Engine.load`` in a fresh
  subprocess per vector dtype, plus the previous behaviour (the CPU fp32 vector set kept
  alive beside the placed copies) for the RSS the placement frees.
- 1B-shaped: a few layers of TinyLlama-1.1B's shapes (hidden 2048, MLP 5632, 4 KV heads) with
  random bf16 θ_c (σ 0.02) and fp32 vectors (σ 1e-3, a fine-tune's delta), composed into a bf16
  model through :class:`msa_core.recompose.RecomposePlan`: max abs difference and the share of
  elements that differ (in a bf16 model mostly a flipped final rounding: one step of w). Per-layer tensors are
  representative of the whole model (the error is per element); no 1B model is held in RAM.
- metrics: the fast tier (``msa_core.eval.run.evaluate``) of the demo at (α, β) with each
  vector dtype, and the difference per metric (``--skip-metrics`` to leave out).

Timings are not taken; RSS depends on the allocator, so compare rows of one run only.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import torch
from _common import demo_experiment_path, machine_info, machine_line, rss_gib, set_threads, table, write_json

# TinyLlama-1.1B's per-layer shapes (see bench/synthetic.py); (name, shape).
LAYER_SHAPES = [
    ("self_attn.q_proj.weight", (2048, 2048)), ("self_attn.k_proj.weight", (256, 2048)),
    ("self_attn.v_proj.weight", (256, 2048)), ("self_attn.o_proj.weight", (2048, 2048)),
    ("mlp.gate_proj.weight", (5632, 2048)), ("mlp.up_proj.weight", (5632, 2048)),
    ("mlp.down_proj.weight", (2048, 5632)), ("input_layernorm.weight", (2048,)),
    ("post_attention_layernorm.weight", (2048,)),
]


def _weights(engine: Any) -> list[torch.Tensor]:
    return [p.detach().clone() for p in engine.plan.params]


def compare(a: list[torch.Tensor], b: list[torch.Tensor], taus: list[torch.Tensor]) -> dict[str, float]:
    """Max abs difference of two composed weight lists, relative to max |τ|, and the share of
    elements that differ. (Not in bf16 steps of w: where θ_c and the terms nearly cancel, w is
    tiny and the vectors' absolute rounding error, ≤ |c·τ|·2⁻⁹, is many of its steps.)"""
    diff = max(float((x.double() - y.double()).abs().max()) for x, y in zip(a, b))
    tau_max = max(float(t.abs().max()) for t in taus)
    n = sum(x.numel() for x in a)
    differ = sum(int((x != y).sum()) for x, y in zip(a, b))
    out = {"max_abs_diff": diff, "rel_to_max_tau": diff / tau_max if tau_max else 0.0, "share_differ": differ / n}
    return out


def demo_weights(exp_path: Path, alpha: float, beta: float) -> dict[str, Any]:
    from msa_core.engine import Engine
    from msa_core.experiment import load_experiment

    exp = load_experiment(exp_path)
    out: dict[str, Any] = {}
    composed = {}
    for vdt in ("float32", "bfloat16"):
        engine = Engine.load(exp, device="cpu", vector_dtype=vdt)
        engine.set_coefficients(alpha, beta)
        composed[vdt] = _weights(engine)
        out[vdt] = {"vector_bytes": engine.memory_bytes()["vectors"], "params": engine.parameter_count,
                    "model_dtype": str(engine.dtype).removeprefix("torch.")}
        taus = list(engine.plan.tau_f) + list(engine.plan.tau_r)
        if vdt == "float32":
            tau_fp32 = [t.clone() for t in taus]
        del engine
        gc.collect()
    out["diff"] = compare(composed["float32"], composed["bfloat16"], tau_fp32)
    return out


def rss_after_load(exp_path: Path, mode: str) -> float:
    """RSS (GiB) of a fresh process after Engine.load in ``mode`` (fp32 | bf16 | bf16-keep-cpu)."""
    code = (
        "import sys, gc, json; sys.path.insert(0, 'bench'); from _common import rss_gib\n"
        "from msa_core.engine import Engine; from msa_core.experiment import load_experiment\n"
        "from msa_core.vectors import compute_vectors\n"
        f"exp = load_experiment({str(exp_path)!r})\n"
        f"mode = {mode!r}\n"
        "keep = compute_vectors(exp) if mode == 'bf16-keep-cpu' else None\n"
        "vdt = 'float32' if mode == 'fp32' else 'bfloat16'\n"
        "e = Engine.load(exp, device='cpu', vector_dtype=vdt)\n"
        "gc.collect(); print(json.dumps(rss_gib()))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    return float(json.loads(res.stdout.strip().splitlines()[-1]))


def one_b_weights(layers: int, alpha: float, beta: float, seed: int = 0) -> dict[str, Any]:
    from msa_core.recompose import RecomposePlan

    gen = torch.Generator().manual_seed(seed)
    shapes = [shape for _ in range(layers) for _name, shape in LAYER_SHAPES]
    pristine = [(torch.randn(s, generator=gen) * 0.02).bfloat16() for s in shapes]
    tau_f = [torch.randn(s, generator=gen) * 1e-3 for s in shapes]
    tau_r = [torch.randn(s, generator=gen) * 1e-3 for s in shapes]
    n = sum(t.numel() for t in pristine)
    out: dict[str, Any] = {"params": n, "layers": layers}
    composed = {}
    for vdt, cast in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        params = [torch.empty(s, dtype=torch.bfloat16) for s in shapes]
        plan = RecomposePlan(params, pristine, [t.to(cast) for t in tau_f], [t.to(cast) for t in tau_r])
        plan.compose(alpha, beta)
        composed[vdt] = params
        out[vdt] = {"vector_bytes": plan.memory_bytes()["vectors"], "bytes_per_move": plan.bytes_per_move}
        del plan
    out["diff"] = compare(composed["float32"], composed["bfloat16"], tau_f + tau_r)
    return out


def metrics(exp_path: Path, alpha: float, beta: float) -> dict[str, dict[str, float]]:
    from msa_core.engine import Engine
    from msa_core.eval.run import evaluate
    from msa_core.experiment import load_experiment

    exp = load_experiment(exp_path)
    out: dict[str, dict[str, float]] = {}
    for vdt in ("float32", "bfloat16"):
        engine = Engine.load(exp, device="cpu", vector_dtype=vdt)
        out[vdt] = evaluate(engine, alpha, beta, tier="fast").flat()
        del engine
        gc.collect()
    return out


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--experiment", default=None, help="experiment YAML (default: the demo)")
    ap.add_argument("--layers", type=int, default=2, help="1B-shaped layers (default 2: ~0.2 B parameters)")
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--beta", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--skip-metrics", action="store_true", help="leave out the fast-tier evaluation")
    ap.add_argument("--no-json", action="store_true", help="do not write bench/results/vector_dtype.json")
    args = ap.parse_args(argv)
    threads = set_threads(args.threads)
    info = machine_info()
    print(machine_line(info))
    print(f"torch threads {threads}; point α={args.alpha:g}, β={args.beta:g}; RSS of this process "
          f"{rss_gib():.2f} GiB at start")
    exp_path = demo_experiment_path(args.experiment)
    demo = demo_weights(exp_path, args.alpha, args.beta)
    rss = {mode: rss_after_load(exp_path, mode) for mode in ("fp32", "bf16", "bf16-keep-cpu")}
    one_b = one_b_weights(args.layers, args.alpha, args.beta)
    rows = []
    for name, res in (("demo", demo), (f"1B-shaped ({args.layers} layers, bf16 model)", one_b)):
        d = res["diff"]
        rows.append({
            "set": name,
            "params": f"{(res.get('params') or res['float32']['params']) / 1e6:.1f} M",
            "vectors fp32": f"{res['float32']['vector_bytes'] / 2**20:.1f} MiB",
            "vectors bf16": f"{res['bfloat16']['vector_bytes'] / 2**20:.1f} MiB",
            "max |Δw|": f"{d['max_abs_diff']:.3g}",
            "max |Δw| / max |τ|": f"{d['rel_to_max_tau']:.3g}",
            "elements differing": f"{100 * d['share_differ']:.2f} %",
        })
    print("\nComposed weights, bf16 vectors vs fp32 vectors")
    print(table(rows))
    print("\nRSS after Engine.load on the CPU (fresh process each; GiB)")
    print(table([{"vectors": k, "RSS GiB": f"{v:.3f}"} for k, v in rss.items()]))
    met: dict[str, dict[str, float]] = {}
    if not args.skip_metrics:
        met = metrics(exp_path, args.alpha, args.beta)
        names = sorted(set(met["float32"]) & set(met["bfloat16"]))
        print(f"\nFast-tier metrics at α={args.alpha:g}, β={args.beta:g}")
        print(table([{"metric": n, "fp32 vectors": f"{met['float32'][n]:.6g}",
                      "bf16 vectors": f"{met['bfloat16'][n]:.6g}",
                      "Δ": f"{met['bfloat16'][n] - met['float32'][n]:+.3g}"} for n in names]))
    if not args.no_json:
        path = write_json("vector_dtype", {"machine": info, "alpha": args.alpha, "beta": args.beta,
                                           "demo": demo, "rss_gib": rss, "one_b": one_b, "metrics": met})
        print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
