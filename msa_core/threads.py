"""How many CPU threads torch uses: one policy for the engine, the CLI and the app.

The policy (:func:`choose_threads`), in order of precedence:

1. an explicit count: ``msa --threads N`` / the app's sidebar setting;
2. the ``MSA_THREADS`` environment variable;
3. by model size: **1 thread** for models under :data:`SMALL_MODEL_PARAMS` parameters, else
   the physical cores this process may run on (:func:`physical_cores`).

Why by size: a small model (the embedded demo has 0.4M–1.9M parameters) is overhead-bound —
each matrix multiply is microseconds of work, so torch's intra-op threads spend much of their
time synchronising. On an idle machine more threads still gain a little there; on a busy one a
descheduled worker thread stalls every operation, and the same work takes several times longer
than with one thread. The risk is lopsided, so small models get one thread. A large model's
matrix multiplies are long enough for the threads to pay for themselves. The measured figures,
with their conditions, are in BENCHMARKS.md ("Threads"); ``python bench/threads.py`` measures
them again (``--sizes`` for the crossover on larger models).

Applying a choice sets torch's count for the calling thread and for threads started after it
(torch reads the last count set when a thread first runs parallel work); threads already
running keep theirs. The CLI applies it in its one thread; the app in each script run's thread.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

ENV_VAR = "MSA_THREADS"

# Below this many parameters a model is overhead-bound on a CPU at the app's batch sizes
# (see the module docstring): one thread is the safe default. 100M is a judgment between the
# demo (1.9M; extra threads gained at most 1.4x there on a quiet machine) and the 1B models of
# real experiments, whose long matrix multiplies should pay for the threads; bench/threads.py
# --sizes measures the crossover on a given machine (BENCHMARKS.md, "Threads").
SMALL_MODEL_PARAMS = 100_000_000

# The largest count accepted from the CLI, the environment or the app (a typo guard, not a tuning value).
MAX_THREADS = 1024


@dataclass(frozen=True)
class ThreadChoice:
    """A torch thread count and why it was chosen (shown in the CLI's notes and the app's sidebar)."""

    threads: int
    source: str  # "--threads", "MSA_THREADS", "sidebar", "policy: …"

    def describe(self) -> str:
        """``"1 thread (policy: model under 100M parameters)"``."""
        return f"{self.threads} thread{'s' if self.threads != 1 else ''} ({self.source})"


def _allowed_cpus() -> set[int]:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))


def _core_of_cpu() -> dict[int, tuple[str, str]]:
    """Logical CPU → (package, core) from /proc/cpuinfo; empty where that file says nothing."""
    cores: dict[int, tuple[str, str]] = {}
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return cores
    for block in text.split("\n\n"):
        fields = dict(line.split(":", 1) for line in block.splitlines() if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        if "processor" in fields and "core id" in fields:
            try:
                cpu = int(fields["processor"])
            except ValueError:
                continue
            cores[cpu] = (fields.get("physical id", "0"), fields["core id"])
    return cores


def physical_cores() -> int:
    """Physical cores among the CPUs this process may run on (hyper-threads count once); >= 1."""
    allowed = _allowed_cpus()
    mapping = _core_of_cpu()
    if mapping and allowed <= set(mapping):
        return max(1, len({mapping[cpu] for cpu in allowed}))
    return max(1, len(allowed))


def parse_threads(value: object, where: str) -> int:
    """``value`` as a thread count in [1, MAX_THREADS]; ValueError naming ``where`` otherwise."""
    try:
        n = int(str(value).strip())
    except ValueError:
        raise ValueError(f"{where} must be a whole number of threads, got {value!r}") from None
    if not 1 <= n <= MAX_THREADS:
        raise ValueError(f"{where} must be between 1 and {MAX_THREADS}, got {n}")
    return n


def env_threads() -> Optional[int]:
    """The count set by ``MSA_THREADS`` (None when unset or empty); ValueError if it is not a count."""
    raw = os.environ.get(ENV_VAR, "").strip()
    return parse_threads(raw, ENV_VAR) if raw else None


def policy_threads(parameter_count: Optional[int], cores: Optional[int] = None) -> ThreadChoice:
    """The size rule alone: 1 thread under :data:`SMALL_MODEL_PARAMS`, else ``cores`` (default:
    :func:`physical_cores`). An unknown size (None) counts as small."""
    if parameter_count is None or parameter_count < SMALL_MODEL_PARAMS:
        size = "size unknown" if parameter_count is None else f"{parameter_count / 1e6:.3g}M parameters"
        return ThreadChoice(1, f"policy: {size}, under {SMALL_MODEL_PARAMS / 1e6:.0f}M")
    n = cores if cores is not None else physical_cores()
    return ThreadChoice(max(1, n), f"policy: {parameter_count / 1e6:.0f}M parameters, one per physical core")


def choose_threads(parameter_count: Optional[int], explicit: Optional[int] = None,
                   explicit_source: str = "--threads") -> ThreadChoice:
    """The thread count by the module's precedence: ``explicit``, then ``MSA_THREADS``, then the size rule."""
    if explicit is not None:
        return ThreadChoice(parse_threads(explicit, explicit_source), explicit_source)
    from_env = env_threads()
    if from_env is not None:
        return ThreadChoice(from_env, ENV_VAR)
    return policy_threads(parameter_count)


def apply_threads(choice: ThreadChoice) -> ThreadChoice:
    """Set torch's intra-op thread count to ``choice.threads`` (this thread and threads started later,
    see the module docstring); returns ``choice``."""
    import torch

    if torch.get_num_threads() != choice.threads:
        torch.set_num_threads(choice.threads)
    return choice


def current_threads() -> int:
    """torch's intra-op thread count now."""
    import torch

    return torch.get_num_threads()
