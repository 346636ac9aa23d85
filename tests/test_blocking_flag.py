"""pyse.BlockingFlag: every method, alone and under concurrency (SPEC section 1)."""
from __future__ import annotations

import threading
import time

import pytest

from pyse import BlockingFlag

pytestmark = pytest.mark.timeout(60)


def start(target, *args) -> threading.Thread:
    t = threading.Thread(target=target, args=args, daemon=True)
    t.start()
    return t


def test_set_and_reset_report_a_change():
    flag = BlockingFlag()
    assert not flag.is_set() and not flag.set_p()
    assert flag.set() is True
    assert flag.set() is False
    assert flag.is_set()
    assert flag.reset() is True
    assert flag.reset() is False
    assert not flag.is_set()
    assert "reset" in repr(flag)


def test_waits_return_the_value_at_once_when_already_there():
    flag = BlockingFlag()
    assert flag.wait_for_reset(0) is False
    assert flag.wait_for_set(0) is False
    flag.set()
    assert flag.wait_for_set() is True
    assert flag.wait(0) is True
    assert flag.wait_for_reset(0) is True


@pytest.mark.parametrize("timeout", [0.05, 0.2])
def test_wait_times_out_with_the_current_value(timeout):
    flag = BlockingFlag()
    t0 = time.monotonic()
    assert flag.wait_for_set(timeout) is False
    assert time.monotonic() - t0 >= timeout
    flag.set()
    t0 = time.monotonic()
    assert flag.wait_for_reset(timeout) is True
    assert time.monotonic() - t0 >= timeout


def test_negative_timeout_is_zero_and_nan_is_refused():
    flag = BlockingFlag()
    assert flag.wait_for_set(-1) is False
    with pytest.raises(ValueError, match="nan"):
        flag.wait_for_set(float("nan"))


@pytest.mark.parametrize("waiter, changer, expected", [
    ("wait_for_set", "set", True),
    ("wait", "set", True),
    ("wait_for_reset", "reset", False),
])
def test_many_waiters_all_wake_on_one_change(waiter, changer, expected):
    flag = BlockingFlag()
    if changer == "reset":
        flag.set()
    results: list[bool] = []
    lock = threading.Lock()
    waiting = threading.Barrier(9)

    def wait() -> None:
        waiting.wait()
        value = getattr(flag, waiter)(30)
        with lock:
            results.append(value)
    threads = [start(wait) for _ in range(8)]
    waiting.wait()
    assert getattr(flag, changer)() is True
    for t in threads:
        t.join(30)
        assert not t.is_alive()
    assert results == [expected] * 8


@pytest.mark.parametrize("method", ["set", "reset"])
def test_exactly_one_of_racing_changers_changes_the_flag(method):
    for _ in range(50):
        flag = BlockingFlag()
        if method == "reset":
            flag.set()
        go = threading.Barrier(6)
        changed: list[bool] = []
        lock = threading.Lock()

        def change() -> None:
            go.wait()
            c = getattr(flag, method)()
            with lock:
                changed.append(c)
        threads = [start(change) for _ in range(6)]
        for t in threads:
            t.join(30)
        assert sorted(changed) == [False] * 5 + [True]
        assert flag.is_set() is (method == "set")


def test_set_reset_storm_never_loses_a_waiter():
    """A waiter for "set" returns True only if it saw the flag set, and every
    waiter returns once the storm ends with the flag set."""
    flag = BlockingFlag()
    stop = threading.Event()
    seen: list[bool] = []
    lock = threading.Lock()

    def toggle() -> None:
        while not stop.is_set():
            flag.set()
            flag.reset()

    def wait() -> None:
        for _ in range(200):
            with lock:
                seen.append(flag.wait_for_set(0.01))

    togglers = [start(toggle) for _ in range(2)]
    waiters = [start(wait) for _ in range(4)]
    for t in waiters:
        t.join(60)
        assert not t.is_alive()
    stop.set()
    for t in togglers:
        t.join(30)
    assert len(seen) == 800
    flag.set()
    assert flag.wait_for_set(5) is True


def test_ping_pong_between_two_threads():
    """Each side waits for the other's change: set/reset and both waits in
    strict alternation, 500 rounds, nothing lost."""
    flag = BlockingFlag()
    rounds = 500
    errors: list[str] = []

    def setter() -> None:
        for i in range(rounds):
            if flag.wait_for_reset(10) is not False:
                errors.append(f"round {i}: no reset seen")
                return
            flag.set()

    def resetter() -> None:
        for i in range(rounds):
            if flag.wait_for_set(10) is not True:
                errors.append(f"round {i}: no set seen")
                return
            flag.reset()

    a, b = start(setter), start(resetter)
    a.join(60)
    b.join(60)
    assert not errors
    assert not a.is_alive() and not b.is_alive()


def test_wait_wakes_promptly_on_change_not_at_timeout():
    flag = BlockingFlag()
    woke: list[float] = []
    ready = threading.Event()

    def wait() -> None:
        ready.set()
        flag.wait_for_set(30)
        woke.append(time.monotonic())
    t = start(wait)
    ready.wait(10)
    time.sleep(0.05)  # let it block; the assertion below holds either way
    set_at = time.monotonic()
    flag.set()
    t.join(30)
    assert woke and woke[0] - set_at < 10, "woken by the change, long before the 30 s timeout"
