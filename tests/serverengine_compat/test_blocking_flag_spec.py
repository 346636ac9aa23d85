"""ServerEngine's spec/blocking_flag_spec.rb, ported to pyse.BlockingFlag.

Ruby's ``set!``/``reset!``/``set?`` are ``set()``/``reset()``/``is_set()``."""
from __future__ import annotations

import threading
import time

import pyse


def test_set_and_reset():
    """set and reset"""
    flag = pyse.BlockingFlag()
    assert not flag.is_set()
    flag.set()
    assert flag.is_set()
    flag.reset()
    assert not flag.is_set()


def test_set_and_reset_return_whether_it_toggled_the_state():
    """set! and reset! return whether it toggled the state"""
    flag = pyse.BlockingFlag()
    assert flag.reset() is False
    assert flag.set() is True
    assert flag.set() is False
    assert flag.reset() is True


def test_wait_for_set_timeout():
    """wait_for_set timeout"""
    flag = pyse.BlockingFlag()
    start = time.monotonic()
    assert flag.wait_for_set(0.01) is False
    assert time.monotonic() - start >= 0.01


def test_wait_for_reset_timeout():
    """wait_for_reset timeout"""
    flag = pyse.BlockingFlag()
    flag.set()
    start = time.monotonic()
    assert flag.wait_for_reset(0.01) is True
    assert time.monotonic() - start >= 0.01


def test_wait():
    """wait"""
    flag = pyse.BlockingFlag()
    started = pyse.BlockingFlag()
    start = time.monotonic()
    elapsed = []

    def waiter():
        started.set()
        flag.wait_for_set(1)
        elapsed.append(time.monotonic() - start)

    thread = threading.Thread(target=waiter)
    thread.start()
    assert started.wait_for_set(10)
    flag.set()
    thread.join(10)
    assert not thread.is_alive()
    assert elapsed and elapsed[0] < 0.5
