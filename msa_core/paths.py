"""Where MSA Studio keeps its on-disk cache (vectors, demo, results database).

``MSA_CACHE_DIR`` overrides the location; otherwise it is the repository's ``cache/``
folder (git-ignored except for its ``.gitkeep``).
"""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """The cache folder: $MSA_CACHE_DIR, else ``<repo>/cache``. Created if missing."""
    env = os.environ.get("MSA_CACHE_DIR")
    path = Path(env).expanduser() if env else Path(__file__).resolve().parents[1] / "cache"
    path.mkdir(parents=True, exist_ok=True)
    return path
