"""The progress-callback type shared by long-running core functions.

A callback receives a fraction in [0, 1] and a short human-readable message. The CLI
turns it into a text progress bar, the app into ``st.progress``; core code never
assumes either.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional

Progress = Callable[[float, str], None]


def report(progress: Optional[Progress], fraction: float, message: str) -> None:
    """Call ``progress`` if one was given, clamping the fraction to [0, 1]."""
    if progress is not None:
        progress(min(1.0, max(0.0, float(fraction))), message)


def sub_progress(progress: Optional[Progress], start: float, end: float) -> Progress:
    """A callback mapping [0, 1] onto [start, end] of ``progress`` (for nested steps)."""

    def _inner(fraction: float, message: str) -> None:
        report(progress, start + (end - start) * fraction, message)

    return _inner
