"""A re-entrant lock that serves waiting threads in arrival order, and lets a long holder yield.

The engine's working model is shared by every session of a server process, so using it is
one critical section. A long job in that section (a full-tier evaluation, a sweep point)
would hold every other session's slider move until it ends. Python's ``threading.RLock``
cannot help: a holder cannot see whether anyone waits, and a thread that releases and
re-acquires at once usually wins again (it is not FIFO). :class:`TurnLock` keeps a ticket
queue instead: :meth:`TurnLock.yield_turn` hands the lock to everyone already waiting,
then takes it back, so a waiting session is served between two batches of the long job.
"""

from __future__ import annotations

import threading
from typing import Optional


class TurnLock:
    """A FIFO re-entrant lock; use it as ``with lock:`` or through acquire/release."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._owner: Optional[int] = None
        self._depth = 0
        self._next_ticket = 0  # the ticket the next arriving thread draws
        self._serving = 0  # the lowest ticket not yet served
        self._abandoned: set[int] = set()  # tickets of acquire() calls that timed out

    def _take(self, ticket: int, timeout: Optional[float]) -> bool:
        # Called with self._cond held: wait until the lock is free and it is this ticket's turn.
        ok = self._cond.wait_for(lambda: self._owner is None and self._serving == ticket, timeout)
        if not ok:
            return False
        self._owner = threading.get_ident()
        self._advance()
        return True

    def _advance(self) -> None:
        # Move to the next ticket, past any whose holder gave up waiting.
        self._serving += 1
        while self._serving in self._abandoned:
            self._abandoned.discard(self._serving)
            self._serving += 1
        self._cond.notify_all()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        """Take the lock (again, if this thread holds it); False when not blocking and busy."""
        me = threading.get_ident()
        with self._cond:
            if self._owner == me:
                self._depth += 1
                return True
            if not blocking:
                if self._owner is not None or self._serving != self._next_ticket:
                    return False
            ticket = self._next_ticket
            self._next_ticket += 1
            if not self._take(ticket, None if timeout < 0 or not blocking else timeout):
                # Give the ticket up: later tickets must not wait for one that will never come.
                self._skip(ticket)
                return False
            self._depth = 1
            return True

    def _skip(self, ticket: int) -> None:
        # A timed-out ticket is served as if it had run; the ones after it move up.
        if ticket == self._serving:
            self._advance()  # past it, and past any later abandoned ones
        else:
            self._abandoned.add(ticket)

    def release(self) -> None:
        """Give the lock back once (fully on the outermost release)."""
        with self._cond:
            if self._owner != threading.get_ident():
                raise RuntimeError("TurnLock.release: this thread does not hold the lock")
            self._depth -= 1
            if self._depth == 0:
                self._owner = None
                self._cond.notify_all()

    def waiting(self) -> int:
        """How many threads wait for the lock now."""
        with self._cond:
            return self._next_ticket - self._serving - len(self._abandoned)

    def yield_turn(self) -> bool:
        """If others wait, let all of them (as of now) run first, then hold the lock again at the
        same depth. Returns True when anyone ran. The caller must hold the lock."""
        me = threading.get_ident()
        with self._cond:
            if self._owner != me:
                raise RuntimeError("TurnLock.yield_turn: this thread does not hold the lock")
            if self._next_ticket - self._serving - len(self._abandoned) <= 0:
                return False
            depth = self._depth
            self._owner, self._depth = None, 0
            ticket = self._next_ticket  # behind everyone already waiting
            self._next_ticket += 1
            self._cond.notify_all()
            self._take(ticket, None)
            self._depth = depth
            return True

    def __enter__(self) -> TurnLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
