"""The ``msa`` command line: a thin argparse layer over the functions the app calls.

Commands: ``demo``, ``vectors``, ``compose``, ``generate`` (and ``eval``, ``sweep``,
``results`` from :mod:`msa_core.eval.cli_commands`). Every command that produces
numbers takes ``--json``. This is the only module of msa_core that prints.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from msa_core.progress import Progress

log = logging.getLogger("msa")


def text_progress(enabled: bool = True) -> Progress:
    """A one-line text progress bar on stderr."""
    state = {"last": -1.0}

    def _cb(fraction: float, message: str) -> None:
        if not enabled:
            return
        if fraction - state["last"] < 0.01 and fraction < 1.0:
            return
        state["last"] = fraction
        width = 30
        filled = int(round(width * fraction))
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {fraction * 100:5.1f}% {message[:60]:<60}")
        if fraction >= 1.0:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return _cb


def _emit(args: argparse.Namespace, payload: dict[str, Any], human: Callable[[], None]) -> None:
    if getattr(args, "json", False):
        print(json.dumps(payload, indent=2, default=str))
    else:
        human()


def _load_engine(args: argparse.Namespace) -> Any:
    from msa_core.engine import Engine, ModuleFilter
    from msa_core.experiment import load_experiment

    exp = load_experiment(args.experiment)
    flt = None
    if getattr(args, "only", None) or getattr(args, "layers", None):
        layers = None
        if args.layers:
            try:
                first, last = (int(x) for x in args.layers.split("-"))
            except ValueError:
                raise ValueError(f"--layers must look like 0-7, got {args.layers!r}") from None
            layers = (first, last)
        flt = ModuleFilter(include=args.only, layers=layers)
    return Engine.load(exp, device=args.device, dtype=args.dtype, module_filter=flt, progress=text_progress(not args.json))


def cmd_demo(args: argparse.Namespace) -> int:
    from msa_core.demo import build_demo

    t0 = time.perf_counter()
    path = build_demo(Path(args.out) if args.out else None, quick=args.quick, seed=args.seed, progress=text_progress(not args.json), force=args.force)
    payload = {"experiment": str(path), "seconds": round(time.perf_counter() - t0, 2)}
    _emit(args, payload, lambda: print(path))
    return 0


def cmd_vectors(args: argparse.Namespace) -> int:
    from msa_core.experiment import load_experiment
    from msa_core.vectors import compute_vectors

    exp = load_experiment(args.experiment)
    vs = compute_vectors(exp, progress=text_progress(not args.json))
    groups: dict[str, dict[str, float]] = {}
    for name, n in vs.norms.items():
        g = _group_of(name)
        acc = groups.setdefault(g, {"forget_sq": 0.0, "retain_sq": 0.0, "tensors": 0})
        acc["forget_sq"] += n["forget"] ** 2
        acc["retain_sq"] += n["retain"] ** 2
        acc["tensors"] += 1
    table = {g: {"forget_norm": v["forget_sq"] ** 0.5, "retain_norm": v["retain_sq"] ** 0.5, "tensors": int(v["tensors"])} for g, v in groups.items()}
    payload = {"cache": str(vs.path), "from_cache": vs.from_cache, "seconds": round(vs.seconds, 3), "fingerprint": vs.fingerprint, "groups": table}

    def human() -> None:
        print(f"vectors {'loaded from cache' if vs.from_cache else 'computed'} in {vs.seconds:.2f}s: {vs.path}")
        print(f"{'group':<28}{'tensors':>8}{'‖τ_f‖':>12}{'‖τ_r‖':>12}")
        for g, v in table.items():
            print(f"{g:<28}{v['tensors']:>8}{v['forget_norm']:>12.4f}{v['retain_norm']:>12.4f}")

    _emit(args, payload, human)
    return 0


def _group_of(name: str) -> str:
    """'model.layers.3.mlp.up_proj.weight' → 'layers.3.mlp'; embeddings/norm/head by name."""
    parts = name.split(".")
    if "layers" in parts:
        i = parts.index("layers")
        sub = parts[i + 2] if len(parts) > i + 2 else ""
        return f"layers.{parts[i + 1]}.{sub}"
    return ".".join(p for p in parts if p not in ("model", "weight", "bias")) or name


def cmd_compose(args: argparse.Namespace) -> int:
    from msa_core.export import export_model

    engine = _load_engine(args)
    out = export_model(engine, args.alpha, args.beta, Path(args.out), force=args.force)
    _emit(args, {"out": str(out), "alpha": args.alpha, "beta": args.beta}, lambda: print(out))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from msa_core.generation import generate_answers

    engine = _load_engine(args)
    prompts: list[str] = list(args.prompt or [])
    if not prompts:
        raise ValueError("give at least one --prompt")
    kw = dict(max_new_tokens=args.max_new_tokens, do_sample=args.sample, seed=args.seed)
    columns: dict[str, list[str]] = {}
    with engine.session(0.0, 0.0) as model:
        columns["corrupted"] = generate_answers(model, engine.tokenizer, prompts, **kw)
    with engine.session(args.alpha, args.beta) as model:
        columns[f"unlearned(α={args.alpha:g}, β={args.beta:g})"] = generate_answers(model, engine.tokenizer, prompts, **kw)
    ref = engine.side_model("reference")
    if ref is not None:
        columns["reference"] = generate_answers(ref, engine.tokenizer, prompts, **kw)
    rows = [{"prompt": p, **{k: v[i] for k, v in columns.items()}} for i, p in enumerate(prompts)]

    def human() -> None:
        for row in rows:
            print(f"\n> {row['prompt']}")
            for k in columns:
                print(f"  {k:<28} {row[k]}")

    _emit(args, {"alpha": args.alpha, "beta": args.beta, "answers": rows}, human)
    return 0


def _add_engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("experiment", help="experiment YAML file")
    p.add_argument("--device", default=None, help="cuda / cpu (default: cuda if available)")
    p.add_argument("--dtype", default=None, help="float32 / bfloat16 / float16 (default: checkpoint's; bf16 on GPU)")
    p.add_argument("--only", default=None, help="apply α/β only to parameters matching this regex (e.g. mlp)")
    p.add_argument("--layers", default=None, help="apply α/β only to this layer range, e.g. 0-7")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="msa", description="Model State Arithmetic unlearning: θc − α·τf + β·τr")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="build the embedded demo experiment (no download)")
    p.add_argument("--out", default=None, help="folder (default: cache/demo or cache/demo-quick)")
    p.add_argument("--quick", action="store_true", help="tiny variant for tests (< 1 min)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="rebuild even if a finished build exists")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("vectors", help="compute or load the cached forget/retain vectors")
    p.add_argument("experiment")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_vectors)

    p = sub.add_parser("compose", help="write the unlearned model at (α, β) as an HF folder")
    _add_engine_args(p)
    p.add_argument("--alpha", type=float, required=True)
    p.add_argument("--beta", type=float, default=0.0)
    p.add_argument("--out", required=True)
    p.add_argument("--force", action="store_true", help="overwrite an existing --out folder")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_compose)

    p = sub.add_parser("generate", help="side-by-side answers: corrupted / unlearned / reference")
    _add_engine_args(p)
    p.add_argument("--alpha", type=float, required=True)
    p.add_argument("--beta", type=float, default=0.0)
    p.add_argument("--prompt", action="append", help="a question (repeatable)")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--sample", action="store_true", help="seeded sampling instead of greedy")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_generate)

    try:
        from msa_core.eval.cli_commands import register
    except ImportError:  # evaluation commands not installed in this build
        register = None
    if register is not None:
        register(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError, KeyError, OSError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"msa {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"msa {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
