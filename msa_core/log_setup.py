"""Logging for the CLI and the app: one call that sets the level and keeps third-party chatter out.

``rouge_score`` logs "Using default tokenizer." through ``absl`` at INFO each time a scorer
is made — a screenful of lines per evaluation in the app's terminal (which logs at INFO).
:func:`configure_logging` installs the root handler with a filter that drops INFO and below
from the loggers in :data:`QUIET_LOGGERS`; their warnings and errors still show.
"""

from __future__ import annotations

import logging

# Loggers whose INFO lines say nothing a user of MSA Studio can act on.
QUIET_LOGGERS = ("absl",)


class _QuietThirdParty(logging.Filter):
    """Drops records below WARNING from :data:`QUIET_LOGGERS` (and their children)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        return not any(record.name == name or record.name.startswith(name + ".") for name in QUIET_LOGGERS)


def configure_logging(level: int, fmt: str = "%(asctime)s %(name)s %(levelname)s %(message)s") -> None:
    """``logging.basicConfig(level, fmt)``, then the quiet filter on every root handler.

    NOTE: a filter on the handlers, not ``logging.getLogger("absl").setLevel``: creating the
    "absl" logger before absl is imported would make it a plain Logger instead of absl's own class.
    """
    logging.basicConfig(level=level, format=fmt)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _QuietThirdParty) for f in handler.filters):
            handler.addFilter(_QuietThirdParty())
