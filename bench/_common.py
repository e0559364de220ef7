"""Shared helpers for the benchmark scripts: machine description, paired timing, tables, JSON.

Timings on shared machines are noisy, so every figure is a ratio against a baseline
measured in the same run, interleaved with it (baseline, candidate, baseline, candidate…)
so that a change in background load hits both; absolute times are context only.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
ROLES = ("clean", "corrupted", "forget", "retain")  # the four checkpoints a naive merge loads
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _meminfo_gib() -> dict[str, float]:
    out: dict[str, float] = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, val = line.split(":", 1)
            if key in ("MemTotal", "MemAvailable"):
                out[key] = round(int(val.split()[0]) / 1024**2, 1)
    except OSError:
        pass
    return out


def machine_info() -> dict[str, Any]:
    """nproc, CPU model, memory, load, torch/transformers versions, threads, date, GPU."""
    import torch
    import transformers

    info: dict[str, Any] = {
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpu": _cpu_model(),
        "mem_gib": _meminfo_gib(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        info["free_h"] = subprocess.run(["free", "-h"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        info["free_h"] = None
    return info


def machine_line(info: Mapping[str, Any]) -> str:
    mem = info.get("mem_gib", {})
    return (
        f"{info['date']}  {info['nproc']} CPU ({info['cpu']}), {mem.get('MemTotal', '?')} GiB RAM "
        f"({mem.get('MemAvailable', '?')} available), load {info['loadavg']}, torch {info['torch']}, "
        f"transformers {info['transformers']}, {info['torch_threads']} torch threads"
        + (f", GPU {info['cuda']}" if info.get("cuda") else "")
    )


def sync(device: Any) -> None:
    """Wait for queued device work (CUDA); a no-op on the CPU."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed(fn: Callable[[], Any], device: Any = "cpu") -> float:
    """Seconds one call of ``fn`` takes (device-synchronised)."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def paired(
    baseline: Callable[[], Any],
    candidates: Mapping[str, Callable[[], Any]],
    *,
    reps: int = 5,
    warmup: int = 1,
    device: Any = "cpu",
    min_seconds: float = 0.05,
) -> dict[str, dict[str, float]]:
    """Interleave baseline and candidates ``reps`` times.

    Returns, per candidate: ``ratio`` = median over reps of baseline_time / candidate_time
    (each pair taken back to back), ``seconds`` = median candidate time, ``baseline_seconds``
    = median baseline time, and ``ratio_min``/``ratio_max`` over reps. A call shorter than
    ``min_seconds`` is timed k times per sample and the median kept (times are per call).
    """
    for _ in range(warmup):
        baseline()
        for fn in candidates.values():
            fn()

    # A call shorter than min_seconds is timed k times and its median taken as one sample:
    # on a shared machine a short call is sometimes stalled for milliseconds (a descheduled
    # worker thread), and a mean over back-to-back calls would be mostly those stalls.
    def calibrate(fn: Callable[[], Any]) -> int:
        t = statistics.median(timed(fn, device) for _ in range(3))
        return max(1, min(200, math.ceil(min_seconds / max(t, 1e-7))))

    def sample(fn: Callable[[], Any], k: int) -> float:
        return statistics.median(timed(fn, device) for _ in range(k))

    inner = {"baseline": calibrate(baseline)}
    inner.update({name: calibrate(fn) for name, fn in candidates.items()})
    base_t: list[float] = []
    cand_t: dict[str, list[float]] = {k: [] for k in candidates}
    ratios: dict[str, list[float]] = {k: [] for k in candidates}
    for _ in range(reps):
        for name, fn in candidates.items():
            tb = sample(baseline, inner["baseline"])
            tc = sample(fn, inner[name])
            base_t.append(tb)
            cand_t[name].append(tc)
            ratios[name].append(tb / tc)
    out = {}
    for name in candidates:
        out[name] = {
            "ratio": statistics.median(ratios[name]),
            "ratio_min": min(ratios[name]),
            "ratio_max": max(ratios[name]),
            "seconds": statistics.median(cand_t[name]),
            "baseline_seconds": statistics.median(base_t),
            "inner_repeats": inner[name],
        }
    return out


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear interpolation."""
    xs = sorted(values)
    if not xs:
        return float("nan")
    pos = (len(xs) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def table(rows: Sequence[Mapping[str, Any]], columns: Optional[Sequence[str]] = None) -> str:
    """A plain-text (markdown-compatible) table."""
    if not rows:
        return "(no rows)"
    cols = list(columns or rows[0].keys())

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            if v != v:
                return "n/a"
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
        return "" if v is None else str(v)

    cells = [[fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"  # noqa: E731
    return "\n".join([line(cols), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in cells])


def write_json(name: str, payload: Mapping[str, Any]) -> Path:
    """Write ``bench/results/<name>.json`` (git-ignored) atomically; returns the path."""
    from msa_core import atomic

    return atomic.write_json(RESULTS / f"{name}.json", dict(payload), indent=1)


def demo_experiment_path(explicit: Optional[str] = None) -> Path:
    """``explicit`` if given; else the full demo's experiment.yaml when built, else the quick
    demo's (built if missing)."""
    if explicit:
        return Path(explicit)
    from msa_core.paths import default_demo_dir

    for quick in (False, True):
        folder = default_demo_dir(quick)
        if (folder / "build.json").is_file() and (folder / "experiment.yaml").is_file():
            return folder / "experiment.yaml"
    from msa_core.demo import build_demo

    return Path(build_demo(quick=True))


def set_threads(n: Optional[int]) -> int:
    """Set torch's intra-op threads (default: min(2, nproc), the house rule); returns it."""
    import torch

    n = n or min(2, os.cpu_count() or 1)
    torch.set_num_threads(n)
    return n


def rss_gib() -> float:
    """Current resident set size of this process (GiB)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return float("nan")
