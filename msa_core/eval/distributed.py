"""α/β sweeps spread over several processes (one per GPU, or CPU processes) with accelerate.

Each process is started by ``accelerate launch`` (torchrun underneath: ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``LOCAL_WORLD_SIZE`` in its environment), joins the process group through
accelerate's :class:`~accelerate.PartialState` (:func:`join_process_group`: NCCL on CUDA, gloo on
CPU), loads its own engine on its own device (``cuda:<local rank>``, or the CPU) and evaluates its
share of the grid (:func:`run_sweep_share`):

- the processes agree on which grid points are already stored (each reports what it sees, the
  union counts), and every process takes ``todo[rank::world_size]`` of the rest, in grid order,
  so a resumed sweep is split again evenly;
- on one host every process writes to the one SQLite store (WAL, busy timeout:
  :mod:`msa_core.sqlite_db`); its primary key makes a duplicate row impossible;
- across hosts (or when asked) each rank writes its own ``<stem>.rank<R>.sqlite``
  (:func:`rank_store_path`) next to the store, and ``msa results --merge`` combines them
  (:meth:`msa_core.eval.store.ResultStore.merge_from`).

A process killed mid-sweep loses only its point in flight (torchrun then stops the others, which
lose theirs); running the same command again evaluates what is missing.

:func:`launch_command` builds the ``accelerate launch`` command that ``msa sweep --processes N``
runs on one host (127.0.0.1 only). The main process writes a :class:`SweepPlan` to the file named
by ``$MSA_SWEEP_PLAN`` when set, so the launching command can say what was stored even when a
process failed.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from msa_core.atomic import write_json
from msa_core.eval.results import EvalResult
from msa_core.eval.run import ReferenceCache
from msa_core.eval.sweep import run_points, sweep_settings, unique_points
from msa_core.progress import Progress

if TYPE_CHECKING:
    from msa_core.engine import Engine
    from msa_core.eval.store import ResultStore

logger = logging.getLogger(__name__)

# The environment variable naming where the main process writes the sweep's plan (JSON).
PLAN_ENV = "MSA_SWEEP_PLAN"
# Where a one-host launch rendezvous: the loopback interface only.
LOCAL_HOST = "127.0.0.1"


def launched_processes() -> int:
    """How many processes this one was launched among (``$WORLD_SIZE``; 1 when unset)."""
    raw = os.environ.get("WORLD_SIZE", "1")
    try:
        return max(1, int(raw))
    except ValueError:
        raise ValueError(f"WORLD_SIZE={raw!r} in the environment is not a whole number") from None


@dataclass(frozen=True)
class ProcessGroup:
    """This process's place among the sweep's processes, and the collective calls they share."""

    index: int  # global rank
    count: int  # processes in all (every host)
    local_index: int  # rank on this host
    local_count: int  # processes on this host
    device: str  # where this process's engine goes: "cuda:<local index>" or "cpu"
    state: Any  # the accelerate PartialState

    @property
    def is_main(self) -> bool:
        return self.index == 0

    @property
    def multi_node(self) -> bool:
        """True when the processes span several hosts (more processes than on this one)."""
        return self.count > self.local_count

    def label(self) -> str:
        return f"process {self.index + 1}/{self.count}"

    def gather(self, obj: Any) -> list[Any]:
        """Every process's ``obj`` (a picklable object), in rank order, on every process."""
        from accelerate.utils import gather_object

        return list(gather_object([obj]))

    def close(self) -> None:
        """Leave the process group (once every process is done with the collectives)."""
        destroy = getattr(self.state, "destroy_process_group", None)
        if destroy is not None:
            destroy()


def join_process_group(device: Optional[str] = None) -> ProcessGroup:
    """Join the process group of an ``accelerate launch`` / torchrun start.

    ``device``: the command's ``--device``. None or "cuda" → ``cuda:<local rank>`` when CUDA is
    available, else the CPU; "cpu" → the CPU (gloo). A single device ("cuda:1") cannot be shared
    out and is refused (ValueError naming ``--device``), as is a local rank without a GPU."""
    import torch
    from accelerate import PartialState

    if device not in (None, "cpu", "cuda"):
        raise ValueError(f"--device {device}: with several processes each takes cuda:<local rank>; "
                         "pass --device cuda or --device cpu (or leave it out)")
    cpu = device == "cpu" or not torch.cuda.is_available()
    state = PartialState(cpu=cpu, backend="gloo" if cpu else None)
    local_count = int(os.environ.get("LOCAL_WORLD_SIZE", state.num_processes))
    local = int(state.local_process_index)
    if not cpu and local >= torch.cuda.device_count():
        raise ValueError(f"process {state.process_index} has local rank {local} but this host has "
                         f"{torch.cuda.device_count()} GPU(s); start at most one process per GPU")
    where = "cpu" if cpu else f"cuda:{local}"
    group = ProcessGroup(int(state.process_index), int(state.num_processes), local, local_count, where, state)
    logger.info("%s (local %d/%d) on %s", group.label(), local + 1, local_count, where)
    return group


def rank_store_path(store: Path, rank: int) -> Path:
    """The per-rank store of ``store`` for rank ``rank``: ``<folder>/<stem>.rank<R>.sqlite``."""
    store = Path(store)
    return store.with_name(f"{store.stem}.rank{int(rank)}.sqlite")


def split_points(todo: Sequence[tuple[float, float]], index: int, count: int) -> list[tuple[float, float]]:
    """Process ``index``'s share of ``todo`` (of ``count`` processes): every ``count``-th point from
    its rank on, in order. The shares are disjoint and together are ``todo``."""
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"process index {index} is not within 0..{count - 1}")
    return list(todo[index::count])


@dataclass(frozen=True)
class SweepPlan:
    """What a sweep over several processes stores, written by its main process (see PLAN_ENV)."""

    fingerprint: str
    tier: str
    settings_key: str
    points: tuple[tuple[float, float], ...]  # the whole grid, in order
    todo: int  # points not yet stored when the processes started
    processes: int
    stores: tuple[str, ...]  # every store the points go to (one, or one per rank)

    def to_json(self) -> dict[str, Any]:
        return {"fingerprint": self.fingerprint, "tier": self.tier, "settings_key": self.settings_key,
                "points": [list(p) for p in self.points], "todo": self.todo, "processes": self.processes,
                "stores": list(self.stores)}

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str) -> SweepPlan:
        try:
            return cls(str(data["fingerprint"]), str(data["tier"]), str(data["settings_key"]),
                       tuple((float(a), float(b)) for a, b in data["points"]), int(data["todo"]),
                       int(data["processes"]), tuple(str(s) for s in data["stores"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"sweep plan {where}: malformed ({exc!r})") from None

    def stored(self) -> list[tuple[float, float]]:
        """The grid points stored now in any of the plan's stores (only stores that exist are read)."""
        from msa_core.eval.store import ResultStore

        stores = [ResultStore(p) for p in self.stores if Path(p).is_file()]
        return [(a, b) for a, b in self.points
                if any(s.has(self.fingerprint, a, b, self.tier, self.settings_key) for s in stores)]


def read_plan(path: Path) -> Optional[SweepPlan]:
    """The plan written at ``path``, or None when none was written (the processes failed earlier)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"sweep plan {path}: unreadable ({exc})") from None
    return SweepPlan.from_json(data, str(path))


def run_sweep_share(
    engine: Engine,
    store: ResultStore,
    points: Sequence[tuple[float, float]],
    group: ProcessGroup,
    *,
    shared_store: bool = True,
    also_read: Sequence[ResultStore] = (),
    tier: str = "fast",
    benchmark: str = "all",
    subset: Optional[int] = None,
    progress: Optional[Progress] = None,
    on_point: Optional[Callable[[EvalResult, bool], None]] = None,
    batch_size: int = 16,
    reference_cache: Optional[ReferenceCache] = None,
    plan_file: Optional[Path] = None,
) -> list[EvalResult]:
    """Evaluate this process's share of the grid ``points`` (see the module docstring); every
    process of ``group`` must call it with the same arguments but its own ``store`` when not
    ``shared_store`` (then ``also_read``: stores whose points count as done, e.g. an earlier merge).

    Returns, on the main process, the results of every grid point in grid order (the stored ones
    and those every process evaluated); on the others, the results of their own share. Every new
    result is stored as soon as it is evaluated (:func:`msa_core.eval.sweep.run_points`)."""
    grid = unique_points(points)
    if not grid:
        raise ValueError("the sweep grid is empty")
    for a, b in grid:
        engine.experiment.validate_coefficients(a, b)
    cache = reference_cache if reference_cache is not None else ReferenceCache()
    kwargs = dict(tier=tier, benchmark=benchmark, subset=subset, batch_size=batch_size, reference_cache=cache)
    if shared_store:
        # The main process evaluates (and stores) the reference; the others then read it from the store.
        with group.state.main_process_first():
            _ref, settings = sweep_settings(engine, store, **kwargs)  # type: ignore[arg-type]
    else:
        _ref, settings = sweep_settings(engine, store, **kwargs)  # type: ignore[arg-type]
    key, fp = settings.key, engine.fingerprint
    readable = [store, *also_read]
    mine = [i for i, (a, b) in enumerate(grid) if any(s.has(fp, a, b, tier, key) for s in readable)]
    # Also the moment every process has looked at the store(s): no point is evaluated before.
    views = group.gather((fp, key, mine, str(store.path)))
    for what, values in (("experiment fingerprints", {v[0] for v in views}), ("settings keys", {v[1] for v in views})):
        if len(values) > 1:
            raise ValueError(f"the processes see different {what} ({', '.join(sorted(values))}): they must load "
                             "the same experiment (same checkpoint files on every host) with the same options")
    done = set().union(*(set(v[2]) for v in views))
    todo = [p for i, p in enumerate(grid) if i not in done]
    share = split_points(todo, group.index, group.count)
    logger.info("%s: %d of %d grid points to evaluate, %d of them here", group.label(), len(todo), len(grid),
                len(share))
    if group.is_main and plan_file is not None:
        stores = [v[3] for v in views] + [str(s.path) for s in also_read]
        plan = SweepPlan(fp, tier, key, tuple(grid), len(todo), group.count, tuple(dict.fromkeys(stores)))
        write_json(plan_file, plan.to_json())
    results = []
    if share:
        results = run_points(engine, store, share, progress=progress, on_point=on_point,
                             **kwargs)  # type: ignore[arg-type]
    # Every new result travels to the main process; stored ones too where the main process cannot
    # read them itself (the other ranks' stores).
    position = {p: i for i, p in enumerate(grid)}
    sent = {position[(r.alpha, r.beta)]: r.to_json() for r in results if (r.alpha, r.beta) in position}
    for i in (mine if group.is_main or not shared_store else []):
        if i not in sent:
            a, b = grid[i]
            found = next((r for r in (s.get(fp, a, b, tier, key) for s in readable) if r is not None), None)
            if found is not None:
                sent[i] = found.to_json()
    gathered = group.gather(sent)
    if not group.is_main:
        return results
    merged: dict[int, dict[str, Any]] = {}
    for part in gathered:
        for i, payload in part.items():
            merged.setdefault(int(i), payload)
    missing = [grid[i] for i in range(len(grid)) if i not in merged]
    if missing:
        logger.warning("%d grid point(s) have no result: %s", len(missing), missing[:5])
    return [EvalResult.from_json(merged[i], where=f"process results ({grid[i]})") for i in sorted(merged)]


def free_port(host: str = LOCAL_HOST) -> int:
    """A TCP port free on ``host`` right now (for the launch's rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def launch_command(
    processes: int,
    msa_args: Sequence[str],
    *,
    port: int,
    python: str = sys.executable,
    module: str = "msa_core",
) -> list[str]:
    """The ``accelerate launch`` command that starts ``processes`` processes of ``python -m module
    *msa_args`` on this host, rendezvous on 127.0.0.1:``port`` (torchrun underneath; each process
    picks its device in :func:`join_process_group`)."""
    if processes < 2:
        raise ValueError(f"--processes {processes}: a launch needs at least 2 processes")
    return [python, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--machine_rank", "0", "--main_process_ip", LOCAL_HOST,
            "--main_process_port", str(port), "--mixed_precision", "no", "--dynamo_backend", "no",
            "-m", module, *msa_args]


def launch_env(plan_file: Path, base: Optional[dict[str, str]] = None) -> dict[str, str]:
    """The environment of the launched processes: ``base`` (default: this one's), this checkout on
    PYTHONPATH (so ``-m msa_core`` finds it from any folder), and ``$MSA_SWEEP_PLAN``."""
    env = dict(os.environ if base is None else base)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([root, *(p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p)])
    env[PLAN_ENV] = str(plan_file)
    return env
