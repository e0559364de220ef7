"""Plain helpers behind pages/state.py's caches (no st.cache_* here, no widgets).

The process-wide memo type, the recently-used-experiments file, the question sets the
pages show, and the results store as one DataFrame.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Hashable, Optional

import pandas as pd

from msa_core.paths import default_cache_dir

RECENT_FILE = "recent_experiments.json"
MAX_RECENT = 8


class Memo:
    """A bounded, thread-safe LRU dict shared by every session of the process."""

    def __init__(self, size: int = 4096) -> None:
        self._data: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()
        self._size = size

    def get(self, key: Hashable) -> Any:
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key]
        return None

    def put(self, key: Hashable, value: Any) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self._size:
                self._data.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


def _recent_path() -> Path:
    return default_cache_dir() / RECENT_FILE


def recent_experiments() -> list[str]:
    """Recently used experiment files that still exist, newest first."""
    try:
        raw = json.loads(_recent_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    if not isinstance(raw, list):
        return []
    return [p for p in raw if isinstance(p, str) and Path(p).is_file()][:MAX_RECENT]


def remember_experiment(path: str) -> None:
    """Put ``path`` first in the recent list (written atomically; failures are ignored)."""
    items = [path] + [p for p in recent_experiments() if p != path]
    target = _recent_path()
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".recent.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(items[:MAX_RECENT], fh, indent=1)
        os.replace(tmp, target)
    except OSError:
        pass  # a read-only cache only costs the recent list


def _raw_paraphrased_questions(path: Path) -> list[Optional[str]]:
    """TOFU's optional ``paraphrased_question`` per row (the validated items drop it); [] when unreadable."""
    if path.suffix != ".json":
        return []
    try:
        text = path.read_text(encoding="utf-8")
        try:
            rows = json.loads(text)
        except ValueError:  # JSON lines (the loader accepted them, so they parse line by line)
            rows = [json.loads(line) for line in text.splitlines() if line.strip().startswith("{")]
    except (OSError, ValueError):
        return []
    if not isinstance(rows, list):
        return []
    return [r.get("paraphrased_question") if isinstance(r, dict) else None for r in rows]


def load_question_sets(tofu: Optional[str], muse: Optional[str], forget: str, retain: str,
                       holdout: str) -> tuple[dict[str, list[dict]], list[str]]:
    """(set name → items with question/answer/paraphrases/perturbed answers, problems) from the
    experiment's TOFU folder (forget, retain, real authors, world facts, holdout) and MUSE knowmem."""
    from msa_core.eval import data as evdata

    sets: dict[str, list[dict]] = {}
    problems: list[str] = []
    if tofu:
        wanted = (("forget", [evdata.perturbed_split_name(forget), forget]),
                  ("retain", [retain, evdata.perturbed_split_name(retain)]),
                  ("real authors", ["real_authors_perturbed", "real_authors"]),
                  ("world facts", ["world_facts_perturbed", "world_facts"]),
                  ("holdout", [holdout, evdata.perturbed_split_name(holdout)]))
        for name, candidates in wanted:
            last: Optional[BaseException] = None
            for split in dict.fromkeys(candidates):
                try:
                    loaded = evdata.load_tofu_split(tofu, split)
                except FileNotFoundError as exc:
                    last = exc
                    continue
                except (ValueError, KeyError, OSError) as exc:
                    last = exc
                    break
                paras = _raw_paraphrased_questions(Path(loaded.source))
                sets[name] = [{"question": it.question, "answer": it.answer,
                               "paraphrased_answer": it.paraphrased_answer,
                               "perturbed_answers": list(it.perturbed_answers),
                               "paraphrased_question": getattr(it, "paraphrased_question", None)
                               or (paras[i] if i < len(paras) else None)}
                              for i, it in enumerate(loaded.items)]
                last = None
                break
            if last is not None:
                problems.append(f"{name}: {last.args[0] if isinstance(last, KeyError) else last}")
    if muse:
        try:
            md = evdata.load_muse(muse)
        except (ValueError, KeyError, OSError) as exc:
            problems.append(f"MUSE: {exc}")
        else:
            for name, pairs in (("MUSE knowmem forget", md.knowmem_forget), ("MUSE knowmem retain", md.knowmem_retain)):
                if pairs:
                    sets[name] = [{"question": q, "answer": a} for q, a in pairs]
    return sets, problems


def results_frame(store: Any, fingerprint: str, tier: Optional[str] = None) -> pd.DataFrame:
    """Every stored point of the engine's experiment, plus the reference model's rows.

    Columns: alpha, beta, tier, benchmark, subset, settings_key, model ('composed' or
    'reference'), seconds, then one column per metric. Read fresh (SQLite is cheap), so a
    sweep running elsewhere shows up on the next rerun.
    """
    rows = []
    for fp, model in ((fingerprint, "composed"), (f"{fingerprint}#reference", "reference")):
        for r in store.results(fp, tier=tier):
            rows.append({"alpha": r.alpha, "beta": r.beta, "tier": r.tier, "benchmark": r.benchmark,
                         "subset": r.settings.get("subset"), "settings_key": r.settings_key, "model": model,
                         "seconds": r.seconds, **r.flat()})
    return pd.DataFrame(rows)
