"""How every ``msa`` command speaks: one ``--json`` rule, the human summary, the progress bar.

The rule, for every command: ``--json FILE`` writes the command's JSON payload to FILE
(atomically) and still prints the human summary; ``--json -`` prints the JSON on stdout
instead of the summary, so stdout is parseable. Progress bars and notes go to stderr and
are switched off by ``--quiet`` and by ``--json -``. On a terminal the bar redraws one
line with ``\r``; when stderr is redirected (a log file, CI) it prints plain lines instead,
at most one every :data:`LOG_LINE_SECONDS` (plus the first and the last).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any, Optional, TextIO

from msa_core.atomic import write_json
from msa_core.progress import Progress

STDOUT = "-"
_BAR_WIDTH = 30
_MESSAGE_WIDTH = 60
# Redraw the bar only every 1% so a fast loop does not flood the terminal.
_REDRAW_STEP = 0.01
# Redirected output gets a plain line at most this often: a 10-minute sweep logs ~60 lines.
LOG_LINE_SECONDS = 10.0


def add_output_args(parser: argparse.ArgumentParser) -> None:
    """``--json FILE`` and ``--quiet``, the same on every command."""
    parser.add_argument("--json", metavar="FILE", default=None,
                        help="write the result as JSON to FILE ('-' = stdout, instead of the summary)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or notes on stderr")


def json_to_stdout(args: argparse.Namespace) -> bool:
    """Whether stdout is reserved for the JSON payload."""
    return args.json == STDOUT


def chatty(args: argparse.Namespace) -> bool:
    """Whether progress bars and notes go to stderr."""
    return not args.quiet and not json_to_stdout(args)


def emit(target: Optional[str], payload: Any, human: Callable[[], None]) -> None:
    """Apply the ``--json`` rule (module docstring) to one command's result."""
    if target == STDOUT:
        print(json.dumps(payload, indent=2, default=str))
        return
    if target:
        write_json(target, payload)
    human()


def note(args: argparse.Namespace, message: str) -> None:
    """A line on stderr unless the command is quiet."""
    if chatty(args):
        print(message, file=sys.stderr)


def text_progress(enabled: bool = True, *, stream: Optional[TextIO] = None, tty: Optional[bool] = None,
                  clock: Callable[[], float] = time.monotonic) -> Progress:
    """Progress on ``stream`` (default stderr; a no-op when not ``enabled``): a one-line bar when
    the stream is a terminal (``tty``, default: ``stream.isatty()``), else plain lines at most one
    every :data:`LOG_LINE_SECONDS` of ``clock``, plus the first and the last."""
    last = [-1.0]
    last_line = [float("-inf")]

    def out() -> TextIO:
        return stream if stream is not None else sys.stderr  # looked up per call: tests swap sys.stderr

    def is_tty() -> bool:
        if tty is not None:
            return tty
        isatty = getattr(out(), "isatty", None)
        return bool(isatty and isatty())

    def draw(fraction: float, message: str) -> None:
        if not enabled:
            return
        if fraction - last[0] < _REDRAW_STEP and fraction < 1.0:
            return
        if not is_tty():
            now = clock()
            if now - last_line[0] < LOG_LINE_SECONDS and fraction < 1.0:
                return
            last_line[0] = now
            last[0] = fraction
            out().write(f"{fraction * 100:5.1f}% {message}\n")
            out().flush()
            return
        last[0] = fraction
        filled = int(round(_BAR_WIDTH * fraction))
        bar = "#" * filled + "." * (_BAR_WIDTH - filled)
        out().write(f"\r[{bar}] {fraction * 100:5.1f}% {message[:_MESSAGE_WIDTH]:<{_MESSAGE_WIDTH}}")
        if fraction >= 1.0:
            out().write("\n")
        out().flush()

    return draw


def progress_for(args: argparse.Namespace) -> Progress:
    """The progress bar of a command, on or off by the output rule."""
    return text_progress(chatty(args))
