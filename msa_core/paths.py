"""Where MSA Studio keeps its on-disk cache (vectors, demo, results database).

``MSA_CACHE_DIR`` overrides the location; otherwise it is the repository's ``cache/``
folder (git-ignored except for its ``.gitkeep``). :func:`output_collision` is the one rule
for "this output path would write over an input".
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Optional


def default_cache_dir() -> Path:
    """The cache folder: $MSA_CACHE_DIR, else ``<repo>/cache``. Created if missing."""
    env = os.environ.get("MSA_CACHE_DIR")
    path = Path(env).expanduser() if env else Path(__file__).resolve().parents[1] / "cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


def default_demo_dir(quick: bool = False) -> Path:
    """Where ``msa demo`` (and the app's first start) builds the demo: ``<cache>/demo``, or
    ``<cache>/demo-quick`` for the quick variant."""
    return default_cache_dir() / ("demo-quick" if quick else "demo")


def default_results_path() -> Path:
    """Where the results store lives unless told otherwise: ``<cache>/results.sqlite``."""
    return default_cache_dir() / "results.sqlite"


def default_export_dir(experiment_name: str, alpha: float, beta: float) -> Path:
    """Where an export goes unless told otherwise: ``<cache>/exports/<name>-a<α>-b<β>``."""
    return default_cache_dir() / "exports" / f"{experiment_name}-a{alpha:g}-b{beta:g}"


def output_collision(out: Path, protected: Mapping[str, Optional[Path]]) -> Optional[str]:
    """Why writing a folder at ``out`` would touch one of ``protected`` (what → path), or None.

    Paths are compared after resolving symlinks: ``out`` may not be, contain, or lie inside
    any of them.
    """
    target = Path(out).expanduser().resolve()
    for what, path in protected.items():
        if path is None:
            continue
        guarded = Path(path).expanduser().resolve()
        if target == guarded:
            return f"{target} is {what} ({guarded})"
        if guarded.is_relative_to(target):
            return f"{target} contains {what} ({guarded})"
        if target.is_relative_to(guarded):
            return f"{target} is inside {what} ({guarded})"
    return None
