"""The ``msa`` command line (also ``python -m msa_core``): a thin argparse layer over msa_core.

The CLI sits above the library: its modules import msa_core, and nothing in msa_core
imports them. Commands: ``demo``, ``vectors``, ``compose``, ``generate``
(:mod:`.models`), ``eval``, ``sweep``, ``results`` (:mod:`.evaluation`), ``finetune``
(:mod:`.training`), ``init`` (:mod:`.init`), ``import`` (:mod:`.interop`), ``rtt`` (:mod:`.rtt`),
``plan`` (:mod:`.plan`) and ``baseline`` (:mod:`.baseline`). Every
command takes ``--json FILE`` (``-`` = stdout) and ``--quiet``, with one meaning
everywhere (:mod:`.output`). This package is the only part of msa_core that prints.

``msa --threads N COMMAND`` sets torch's CPU threads for the whole command; without it the
engine commands follow :mod:`msa_core.threads` (``MSA_THREADS``, else by model size).
Command modules import heavy libraries (torch, transformers) inside their command functions,
so that ``msa --help`` and argument errors (an α out of range, an existing ``--out``) answer
at once, before any model is loaded.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Optional

from msa_core.cli import baseline, evaluation, interop, models, plan, training
from msa_core.cli import init as init_cmd
from msa_core.cli import rtt as rtt_cmd
from msa_core.log_setup import configure_logging
from msa_core.threads import SMALL_MODEL_PARAMS

# What a command may raise for bad input or a failed write: reported in one line, exit 2.
_USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, KeyError, OSError)


def build_parser() -> argparse.ArgumentParser:
    """The ``msa`` parser with every command."""
    parser = argparse.ArgumentParser(prog="msa", description="Model State Arithmetic unlearning: θc − α·τf + β·τr")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--threads", dest="global_threads", metavar="N", default=None,
                        help="torch CPU threads for this command (default: $MSA_THREADS, else 1 for models under "
                             f"{SMALL_MODEL_PARAMS / 1e6:.0f}M parameters and one per physical core above; "
                             "see msa_core/threads.py)")
    sub = parser.add_subparsers(dest="command", required=True)
    models.register(sub)
    evaluation.register(sub)
    training.register(sub)
    init_cmd.register(sub)
    interop.register(sub)
    rtt_cmd.register(sub)
    plan.register(sub)
    baseline.register(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run one ``msa`` command; returns the exit status (0 ok, 2 bad input, 130 interrupted)."""
    args = build_parser().parse_args(argv)
    configure_logging(logging.DEBUG if args.verbose else logging.WARNING, "%(levelname)s %(name)s: %(message)s")
    try:
        models.apply_requested_threads(args)
        return int(args.func(args))
    except _USER_ERRORS as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"msa {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"msa {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
