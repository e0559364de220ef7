"""msa_core.turns: the engine's FIFO re-entrant lock and its yield_turn()."""

from __future__ import annotations

import threading
import time

import pytest

from msa_core.turns import TurnLock


def _wait_until(pred, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise TimeoutError("condition not reached")
        time.sleep(0.001)


def test_reentrant_and_released_only_by_the_outermost_release():
    lock = TurnLock()
    with lock:
        with lock:
            assert lock.acquire(blocking=False)
            lock.release()
        other = []
        t = threading.Thread(target=lambda: other.append(lock.acquire(blocking=False)))
        t.start()
        t.join()
        assert other == [False]
    assert lock.acquire(blocking=False)
    lock.release()


def test_only_the_holder_may_release_or_yield():
    lock = TurnLock()
    with pytest.raises(RuntimeError, match="does not hold"):
        lock.release()
    with pytest.raises(RuntimeError, match="does not hold"):
        lock.yield_turn()


def test_waiters_are_served_in_arrival_order():
    lock = TurnLock()
    order: list[int] = []
    lock.acquire()
    threads = []
    for k in range(5):
        t = threading.Thread(target=lambda k=k: (lock.acquire(), order.append(k), lock.release()))
        t.start()
        threads.append(t)
        _wait_until(lambda k=k: lock.waiting() == k + 1)  # each one queued before the next starts
    lock.release()
    for t in threads:
        t.join(5)
    assert order == [0, 1, 2, 3, 4]


def test_yield_turn_lets_every_waiter_run_then_resumes_at_the_same_depth():
    lock = TurnLock()
    ran: list[str] = []
    with lock, lock:  # depth 2, as in a session inside a session
        assert lock.yield_turn() is False  # nobody waits: keeps the lock
        t = threading.Thread(target=lambda: (lock.acquire(), ran.append("other"), lock.release()))
        t.start()
        _wait_until(lambda: lock.waiting() == 1)
        assert lock.yield_turn() is True
        assert ran == ["other"]
        t.join(5)
        assert lock.acquire(blocking=False)  # still held by this thread, re-entrantly
        lock.release()
    assert lock.waiting() == 0
    assert lock.acquire(blocking=False)
    lock.release()


def test_a_timed_out_waiter_does_not_block_those_behind_it():
    lock = TurnLock()
    lock.acquire()
    results: list[bool] = []
    t1 = threading.Thread(target=lambda: results.append(lock.acquire(timeout=0.05)))
    t1.start()
    t1.join(5)
    assert results == [False]
    got: list[str] = []
    t2 = threading.Thread(target=lambda: (lock.acquire(), got.append("t2"), lock.release()))
    t2.start()
    _wait_until(lambda: lock.waiting() == 1)
    lock.release()
    t2.join(5)
    assert got == ["t2"]
