"""Figure 4: peak memory of computing τ_f, τ_r (streamed) vs loading every checkpoint.

    python bench/vectors_memory.py                 # ~300M-parameter fp32 set under /tmp, removed after
    python bench/vectors_memory.py --dtype bfloat16 --layers 18 --keep

Writes four synthetic Llama checkpoints (clean, corrupted, forget, retain; random weights)
under /tmp/msa-bench-vectors, then measures each method in a fresh subprocess spawned from
a small parent. The peak is the kernel's RSS high-water mark of the process (VmHWM, what
resource.getrusage's ru_maxrss reports for a process that never exec'd; ru_maxrss itself
is shown too: after exec it also carries the parent's RSS at spawn time):

- streamed: ``msa_core.vectors.compute_vectors`` into an empty cache. The peak is split at
  the last tensor's progress report (the kernel's RSS high-water mark is reset through
  /proc/self/clear_refs between phases): the computation itself (read three checkpoints
  tensor by tensor, write both vectors to disk) and then loading the result (τ_f, τ_r in
  fp32, which the engine holds anyway: 2 fp32 models whatever the method).
- streamed through memory maps (the previous library code, as a baseline): the same loop
  taking tensors from ``safetensors.safe_open`` maps, whose pages stay resident.
- load-everything: the four checkpoints loaded whole, τ_f, τ_r computed in place: as four
  models (``from_pretrained``, what the reference script does) and as four state dicts
  (safetensors ``load_file``, which memory-maps: untouched tensors cost nothing).

Figures are peaks above the process's RSS after imports (torch alone is a few hundred MB),
divided by one checkpoint's file size; raw peaks are reported too. Resident pages of a
memory-mapped checkpoint count in RSS (RssFile) though the kernel may drop them at will;
the sampled anonymous-memory peak (RssAnon, every 2 ms) is shown separately.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

from _common import REPO, ROLES, machine_info, machine_line, table, write_json

ROOT = Path("/tmp/msa-bench-vectors")


def status_kib() -> dict[str, int]:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key = line.split(":", 1)[0]
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = int(line.split()[1])
    return out


def reset_peak() -> bool:
    """Reset the RSS high-water mark (VmHWM and ru_maxrss) of this process."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def maxrss_bytes() -> int:
    """getrusage's ru_maxrss: after exec it also keeps the spawning parent's RSS (see main)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def hwm_bytes() -> int:
    """The kernel's RSS high-water mark of this process image (VmHWM; reset by reset_peak)."""
    return status_kib()["VmHWM"] * 1024


class AnonSampler:
    """Samples RssAnon every 2 ms in a thread; ``take()`` returns the max since the last take."""

    def __init__(self) -> None:
        self._max = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._max = max(self._max, status_kib().get("RssAnon", 0))
            time.sleep(0.002)

    def take(self) -> int:
        m = max(self._max, status_kib().get("RssAnon", 0))
        self._max = 0
        return m * 1024

    def stop(self) -> None:
        self._stop.set()
        self._t.join()


def make_checkpoints(layers: int, dtype_name: str) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    dtype = getattr(torch, dtype_name)
    root = ROOT / f"{layers}l-{dtype_name}"
    if all((root / r / "config.json").is_file() for r in ROLES):
        return root
    cfg = LlamaConfig(
        vocab_size=32000,
        hidden_size=1024,
        intermediate_size=2816,
        num_hidden_layers=layers,
        num_attention_heads=16,
        num_key_value_heads=16,
        tie_word_embeddings=False,
    )
    gen = torch.Generator().manual_seed(0)
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    model = model.to(dtype).to_empty(device="cpu")
    base = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            base[name] = (torch.randn(p.shape, generator=gen) * 0.02).to(dtype)
        for role in ROLES:
            for name, p in model.named_parameters():
                p.copy_(base[name])
                if role != "clean":
                    p.add_((torch.randn(p.shape, generator=gen) * 1e-3).to(dtype))
            model.save_pretrained(root / role, safe_serialization=True)
    from msa_core.experiment import Checkpoints, Experiment, save_experiment

    save_experiment(
        Experiment(name="vectors-bench", checkpoints=Checkpoints(**{r: root / r for r in ROLES})),
        root / "experiment.yaml",
    )
    return root


def checkpoint_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


def streamed_worker(root: Path) -> dict[str, Any]:
    import torch  # noqa: F401  (imports counted in the baseline)

    from msa_core.experiment import load_experiment
    from msa_core.vectors import compute_vectors

    exp = load_experiment(root / "experiment.yaml")
    cache = root / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    sampler = AnonSampler()
    reset_peak()
    base = status_kib()["VmRSS"] * 1024
    sampler.take()
    phase: dict[str, Any] = {}

    def progress(frac: float, msg: str) -> None:
        if frac >= 1.0 and msg.startswith("vectors:") and "compute_peak" not in phase:
            phase["compute_peak"] = hwm_bytes()
            phase["compute_ru_maxrss"] = maxrss_bytes()
            phase["compute_anon_peak"] = sampler.take()
            phase["rss_file_at_end"] = status_kib()["RssFile"] * 1024
            phase["reset"] = reset_peak()

    t0 = time.perf_counter()
    vs = compute_vectors(exp, cache_dir=cache, progress=progress)
    seconds = time.perf_counter() - t0
    phase["load_peak"] = hwm_bytes()
    phase["ru_maxrss"] = maxrss_bytes()
    phase["load_anon_peak"] = sampler.take()
    sampler.stop()
    held = sum(t.numel() * t.element_size() for d in (vs.forget, vs.retain) for t in d.values())
    shutil.rmtree(cache, ignore_errors=True)
    return {"baseline_rss": base, "seconds": seconds, "vectors_bytes": held, **phase}


def mmap_worker(root: Path) -> dict[str, Any]:
    """Baseline for the reader choice: the same streamed loop with tensors taken from
    ``safetensors.safe_open`` memory maps (what vectors.py did before it moved to
    positional reads): the maps' pages stay resident until the files are closed."""
    import torch
    from safetensors import safe_open

    def open_map(role: str) -> Any:
        return safe_open(str(next(iter(sorted((root / role).glob("*.safetensors"))))), framework="pt", device="cpu")

    out = root / "mmap-out"
    out.mkdir(exist_ok=True)
    sampler = AnonSampler()
    reset_peak()
    base = status_kib()["VmRSS"] * 1024
    sampler.take()
    t0 = time.perf_counter()
    with (
        open_map("clean") as zc,
        open_map("forget") as fc,
        open_map("retain") as rc,
        open(out / "forget.bin", "wb") as ff,
        open(out / "retain.bin", "wb") as fr,
    ):
        for name in zc.keys():
            z = zc.get_tensor(name).to(torch.float32)
            tf = fc.get_tensor(name).to(torch.float32) - z
            tr = rc.get_tensor(name).to(torch.float32) - z
            for t in (tf, tr):
                if not torch.isfinite(t).all():
                    raise ValueError(name)
            ff.write(memoryview(tf.view(-1).numpy()))
            fr.write(memoryview(tr.view(-1).numpy()))
            del z, tf, tr
        seconds = time.perf_counter() - t0
        peak, ru = hwm_bytes(), maxrss_bytes()
    shutil.rmtree(out, ignore_errors=True)
    return {"baseline_rss": base, "seconds": seconds, "peak": peak, "ru_maxrss": ru, "anon_peak": sampler.take()}


def load_all_worker(root: Path, how: str = "models") -> dict[str, Any]:
    """Everything in memory at once: four models (``from_pretrained``, as the reference script
    does) or four state dicts (safetensors ``load_file``, zero-copy memory maps); τ in place."""
    import torch
    from safetensors.torch import load_file

    from msa_core.checkpoints import load_model

    sampler = AnonSampler()
    reset_peak()
    base = status_kib()["VmRSS"] * 1024
    sampler.take()
    t0 = time.perf_counter()
    sd: dict[str, dict[str, Any]] = {}
    for r in ROLES:
        if how == "models":
            sd[r] = dict(load_model(root / r).named_parameters())
        else:
            sd[r] = {}
            for f in sorted((root / r).glob("*.safetensors")):
                sd[r].update(load_file(str(f)))
    with torch.no_grad():
        for name, z in sd["clean"].items():
            sd["forget"][name].sub_(z)  # τ_f in place (checkpoint dtype, as the reference does)
            sd["retain"][name].sub_(z)
    seconds = time.perf_counter() - t0
    return {
        "baseline_rss": base,
        "seconds": seconds,
        "peak": hwm_bytes(),
        "ru_maxrss": maxrss_bytes(),
        "anon_peak": sampler.take(),
    }


def run_worker(kind: str, *args: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), f"_{kind}", *args], capture_output=True, text=True, cwd=REPO
    )
    if proc.returncode != 0:
        return {"error": " / ".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "_build":
        print(json.dumps({"root": str(make_checkpoints(int(argv[1]), argv[2]))}))
        return 0
    if argv and argv[0] in ("_streamed", "_load_all", "_mmap"):
        fn = {"_streamed": streamed_worker, "_load_all": load_all_worker, "_mmap": mmap_worker}[argv[0]]
        print(json.dumps(fn(Path(argv[1]), *argv[2:])))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", default="float32", help="checkpoint dtype (float32 or bfloat16)")
    ap.add_argument("--layers", type=int, default=18, help="18 layers of the 1024-wide shape ≈ 297M parameters")
    ap.add_argument("--keep", action="store_true", help="keep the synthetic checkpoints")
    ap.add_argument("--no-json", action="store_true")
    args = ap.parse_args(argv)
    # This process stays small (no torch) until the workers are done: a child's ru_maxrss
    # starts at its parent's RSS at spawn time (the kernel carries the pre-exec image's peak).
    t0 = time.perf_counter()
    ROOT.mkdir(parents=True, exist_ok=True)
    try:
        built = run_worker("build", str(args.layers), args.dtype)
        if "error" in built:
            raise SystemExit(f"building the synthetic checkpoints failed: {built['error']}")
        root = Path(built["root"])
        ck = checkpoint_bytes(root / "clean")
        print(
            f"synthetic checkpoints: {root} ({ck / 1e9:.2f} GB each, built in {time.perf_counter() - t0:.0f} s); "
            f"parent RSS {status_kib()['VmRSS'] / 1024:.0f} MB"
        )
        streamed = run_worker("streamed", str(root))
        loaded = run_worker("load_all", str(root), "models")
        mapped = run_worker("load_all", str(root), "state_dicts")
        mapped_stream = run_worker("mmap", str(root))
    finally:
        if not args.keep:
            shutil.rmtree(ROOT, ignore_errors=True)
    info = machine_info()
    print(machine_line(info))
    rows = []

    def row(method: str, base: int, peak: int, anon: int, ru: int, seconds: Optional[float]) -> dict[str, Any]:
        return {
            "method": method,
            "peak_GB": peak / 1e9,
            "above_imports_GB": (peak - base) / 1e9,
            "x_checkpoint": (peak - base) / ck,
            "anon_peak_x": (anon - base) / ck,
            "ru_maxrss_GB": ru / 1e9,
            "seconds": seconds,
        }

    if "error" in streamed:
        print("streamed FAILED:", streamed["error"])
    else:
        b = streamed["baseline_rss"]
        rows.append(
            row(
                "streamed: computation (compute_vectors until the last tensor is written)",
                b,
                streamed["compute_peak"],
                streamed["compute_anon_peak"],
                streamed["compute_ru_maxrss"],
                None,
            )
        )
        rows.append(
            row(
                "streamed: then loading τ_f, τ_r (fp32) for the engine",
                b,
                streamed["load_peak"],
                streamed["load_anon_peak"],
                streamed["ru_maxrss"],
                streamed["seconds"],
            )
        )
    for res, label in (
        (mapped_stream, "streamed through safe_open memory maps (previous vectors.py)"),
        (loaded, "load-everything: 4 models (from_pretrained), τ in place"),
        (mapped, "load-everything: 4 state dicts (safetensors load_file, mmap), τ in place"),
    ):
        if "error" in res:
            print(label, "FAILED:", res["error"])
            continue
        rows.append(row(label, res["baseline_rss"], res["peak"], res["anon_peak"], res["ru_maxrss"], res["seconds"]))
    print(f"\n[vector computation peak RSS; one checkpoint = {ck / 1e9:.2f} GB ({args.dtype})]")
    print(table(rows))
    if rows and "error" not in streamed and "error" not in loaded:
        lb, sb = loaded["baseline_rss"], streamed["baseline_rss"]
        rss = (loaded["peak"] - lb) / max(1, streamed["compute_peak"] - sb)
        anon = (loaded["anon_peak"] - lb) / max(1, streamed["compute_anon_peak"] - sb)
        print(
            f"\nload-everything (4 models) vs streamed computation: {rss:.1f}x "
            f"the resident memory, {anon:.1f}x the anonymous memory"
        )
    if not args.no_json:
        print(
            "JSON:",
            write_json(
                f"vectors-memory-{args.dtype}",
                {
                    "machine": info,
                    "checkpoint_bytes": ck,
                    "streamed": streamed,
                    "load_all": loaded,
                    "load_all_mmap": mapped,
                    "streamed_mmap": mapped_stream,
                    "rows": rows,
                },
            ),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
