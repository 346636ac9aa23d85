"""``pyse.BlockingFlag``: a boolean that threads can wait on in both
directions, ServerEngine's ``BlockingFlag``.

The usual worker::

    def initialize(self):
        self.flag = pyse.BlockingFlag()
    def run(self):
        while not self.flag.wait_for_set(1.0):
            ...one unit of work...
    def stop(self):
        self.flag.set()
"""
from __future__ import annotations

import threading
import time
from typing import Optional


class BlockingFlag:
    __slots__ = ("_cond", "_set")

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._set = False

    def __repr__(self) -> str:
        return f"<BlockingFlag {'set' if self._set else 'reset'}>"

    def set(self) -> bool:
        """Sets the flag; True if it was reset (this call changed it)."""
        return self._change(True)

    def reset(self) -> bool:
        """Resets the flag; True if it was set (this call changed it)."""
        return self._change(False)

    def is_set(self) -> bool:
        return self._set

    set_p = is_set   # ServerEngine's set?

    def wait_for_set(self, timeout: Optional[float] = None) -> bool:
        """Waits until the flag is set or ``timeout`` seconds passed (None:
        forever); returns the flag's value at return, so True means set."""
        return self._wait_for(True, timeout)

    def wait_for_reset(self, timeout: Optional[float] = None) -> bool:
        """Waits until the flag is reset or ``timeout`` seconds passed; returns
        the flag's value at return, so False means reset."""
        return self._wait_for(False, timeout)

    wait = wait_for_set

    def _change(self, value: bool) -> bool:
        with self._cond:
            if self._set is value:
                return False
            self._set = value
            self._cond.notify_all()
            return True

    def _wait_for(self, value: bool, timeout: Optional[float]) -> bool:
        if timeout is not None:
            if timeout != timeout:
                raise ValueError("timeout must be a number of seconds or None, got nan")
            deadline = time.monotonic() + max(0.0, timeout)
        with self._cond:
            while self._set is not value:
                if timeout is None:
                    self._cond.wait()
                    continue
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return self._set
