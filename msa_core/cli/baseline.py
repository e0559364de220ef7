"""``msa baseline``: placeholder, filled in by its owner (registers nothing yet)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the command (nothing yet)."""
