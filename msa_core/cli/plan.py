"""``msa plan``: bytes per device of an engine for every loading option, before anything is loaded.

Reads the experiment's θ_corrupted checkpoint headers (or, with ``--config``, a config alone),
prints one row per option combination (model dtype × vector dtype × side models × device map)
and the chosen plan per device; a chosen plan that does not fit exits 2, naming the shortfall
and the cheapest option that would fit. The numbers and their rule: :mod:`msa_core.plan`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from msa_core.cli.output import add_output_args, emit

if TYPE_CHECKING:
    from msa_core.plan import MemoryPlan

_TABLE_DTYPES = ("float32", "bfloat16")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``plan`` to the ``msa`` parser."""
    p = sub.add_parser("plan", help="memory per device for each loading option (refuses a plan that does not fit)",
                       description="Bytes per device of the engine (working model, θ_c, τ_f + τ_r, side models, "
                                   "headroom) for every option, from the checkpoint's headers: nothing is loaded.")
    p.add_argument("experiment", nargs="?", default=None, help="experiment YAML file (or give --config)")
    p.add_argument("--config", default=None, metavar="FILE",
                   help="plan for a transformers config.json (or a folder holding one) instead of an experiment")
    p.add_argument("--dtype", default=None,
                   help="model dtype float32 / bfloat16 / float16 (default: as the engine picks: the checkpoint's, "
                        "bf16 on a GPU for fp32 checkpoints)")
    p.add_argument("--vector-dtype", default="float32", help="τ_f, τ_r dtype: float32 (default) or bfloat16")
    p.add_argument("--side-models", default="cached", choices=("cached", "device"),
                   help="clean/reference models: answers from the disk cache (0 bytes, default) or one model each "
                        "on the device")
    p.add_argument("--device-map", default=None,
                   help="one device (cuda:1, cpu), 'auto' (whole decoder layers over --devices, as accelerate "
                        "splits them) or a JSON file mapping module prefixes to devices (default: the first device)")
    p.add_argument("--devices", default=None,
                   help="device capacities, e.g. 'cuda:0=80GiB,cuda:1=80GiB' or '8x80GiB' (default: this "
                        "machine's CUDA devices, else its RAM)")
    p.add_argument("--batch", type=int, default=None, metavar="N",
                   help="sequences the headroom holds KV cache and logits for (default 1: evaluation batches "
                        "are then chosen from what is free)")
    p.add_argument("--max-length", type=int, default=None, metavar="T",
                   help="tokens per sequence for the headroom (default: the model's max positions, at most 2048)")
    add_output_args(p)
    p.set_defaults(func=cmd_plan)


def _device_map(raw: Optional[str]) -> Any:
    if raw is None or raw.strip() == "":
        return None
    if raw.strip().lower().endswith(".json"):
        path = Path(raw)
        if not path.is_file():
            raise FileNotFoundError(f"--device-map file {path} does not exist")
        from msa_core.untrusted import read_json_object

        mapping = read_json_object(path)
        bad = [k for k, v in mapping.items() if not isinstance(v, (str, int))]
        if bad:
            raise ValueError(f"{path}: device_map[{bad[0]!r}] must be a device name like cuda:0")
        return {k: (f"cuda:{v}" if isinstance(v, int) else v) for k, v in mapping.items()}
    return raw.strip()


def _unit(largest: int) -> tuple[str, int]:
    """The table unit: GiB, or MiB / KiB for models too small to show in GiB."""
    for name, size in (("GiB", 2**30), ("MiB", 2**20)):
        if largest >= size:
            return name, size
    return "KiB", 2**10


def print_table(plans: list[MemoryPlan]) -> None:
    """One row per option combination: totals and whether it fits."""
    unit, size = _unit(max(p.total_bytes for p in plans))

    def _size(n: int) -> str:
        return f"{n / size:.1f}"

    print(f"  {'model':<9}{'vectors':<10}{'side models':<13}{'device map':<12}{'total ' + unit:>10}"
          f"{'fullest ' + unit:>12}{'devices':>8}  fits")
    for p in plans:
        o = p.options
        dm = "one device" if o.device_map is None else ("auto" if o.device_map == "auto" else "explicit")
        used = len([r for r in p.rows if r.working_model > 0])
        print(f"  {o.dtype:<9}{o.vector_dtype:<10}{o.side_models:<13}{dm:<12}{_size(p.total_bytes):>10}"
              f"{_size(p.largest_device_bytes):>12}{used:>8}  {'yes' if p.fits else 'no'}")


def print_plan(plan: MemoryPlan) -> None:
    """The chosen plan, one row per device, and its verdict."""
    unit, size = _unit(max(r.total for r in plan.rows))

    def _size(n: int) -> str:
        return f"{n / size:.1f}"

    print(f"chosen: {plan.options.label()}")
    print(f"  {'device':<11}{'model':>8}{'θ_c':>8}{'τf+τr':>8}{'side':>8}{'headroom':>9}{'total':>8}"
          f"{'capacity':>9}  fits   ({unit})")
    for r in plan.rows:
        cap = f"{r.capacity / 2**30:.1f}G" if unit != "GiB" else _size(r.capacity)
        print(f"  {r.device:<11}{_size(r.working_model):>8}{_size(r.theta_c):>8}{_size(r.vectors):>8}"
              f"{_size(r.side_models):>8}{_size(r.headroom):>9}{_size(r.total):>8}{cap:>9}  "
              f"{'yes' if r.fits else 'no'}")
    print(plan.verdict())


def cmd_plan(args: argparse.Namespace) -> int:
    from msa_core.experiment import load_experiment
    from msa_core.plan import (
        PlanOptions,
        device_name,
        experiment_shape,
        load_config_file,
        machine_devices,
        parse_devices,
        plan_memory,
        plan_table,
        resolve_dtype,
        shape_from_config,
        side_model_count,
    )

    if (args.experiment is None) == (args.config is None):
        raise ValueError("give an experiment file or --config FILE (one of them)")
    devices = parse_devices(args.devices) if args.devices else machine_devices()
    device_map = _device_map(args.device_map)
    if args.config is not None:
        shape = shape_from_config(load_config_file(args.config), source=str(args.config))
        n_side = 2  # a config-only plan assumes an experiment with clean and reference models
    else:
        exp = load_experiment(args.experiment)
        shape = experiment_shape(exp)
        n_side = side_model_count(exp)
    if isinstance(device_map, str) and device_map != "auto":
        name = device_name(device_map)  # one device named: plan on it alone
        if name not in devices:
            raise ValueError(f"--device-map {device_map}: not among the devices {', '.join(devices)}")
        devices = {name: devices[name]}
        device_map = None
    dtype = resolve_dtype(args.dtype, shape, devices)
    kw: dict[str, Any] = {"side_models": n_side, "batch": args.batch or 1, "max_length": args.max_length}
    opts = PlanOptions(dtype=dtype, vector_dtype=args.vector_dtype, side_models=args.side_models,
                       device_map=device_map)
    chosen = plan_memory(shape, opts, devices, **kw)
    table = plan_table(shape, devices, dtypes=_TABLE_DTYPES if args.dtype is None else (dtype,), **kw)
    payload = {"source": shape.source, "parameter_count": shape.parameter_count,
               "devices": devices, "chosen": chosen.as_dict(), "options": [p.as_dict() for p in table]}

    def human() -> None:
        print(f"{shape.source}: {shape.parameter_count:,} parameters (tied weights once), stored "
              f"{shape.stored_dtype}; {n_side} side model(s); devices "
              + ", ".join(f"{d}={c / 2**30:.1f}GiB" for d, c in devices.items()))
        print(f"headroom: 10% of the tensors + KV cache, one layer's activations and logits for "
              f"{chosen.batch} × {chosen.max_length} tokens")
        print_table(table)
        print_plan(chosen)

    emit(args.json, payload, human)
    if not chosen.fits:
        print(f"msa plan: {chosen.verdict()}", file=sys.stderr)
        return 2
    return 0
