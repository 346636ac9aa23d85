"""The process manager's watchers: fds and deadlines a forking process
serves from its loop, without a thread."""
from __future__ import annotations

import logging
import os
import signal

import pytest

from helpers import close_quietly, kill_config, open_fds, wait_for, wait_pid_exit
from pyse import lowlevel
from pyse.process_manager import ChildRole, ProcessManager

pytestmark = pytest.mark.timeout(30)


class PipeWatcher:
    """Reads a pipe when it is readable; wants a deadline when asked to."""

    def __init__(self, fail: bool = False) -> None:
        self.r, self.w = os.pipe()
        os.set_blocking(self.r, False)
        self.read: list[bytes] = []
        self.deadline: float | None = None
        self.deadlines_served: list[float] = []
        self.fail = fail

    def watches(self):
        return [(self.r, True, False)]

    def handle_ready(self, fd, readable, writable, now):
        assert fd == self.r and readable and not writable
        self.read.append(os.read(self.r, 100))
        if self.fail:
            raise RuntimeError("a watcher bug")

    def next_deadline(self):
        return self.deadline

    def handle_deadline(self, now):
        self.deadlines_served.append(now)
        self.deadline = None

    def close(self):
        close_quietly(self.r, self.w)


@pytest.fixture
def manager():
    m = ProcessManager(logging.getLogger("pyse-test-manager"), signals=())
    m.open()
    yield m
    m.close()


def wait_until_quiet(manager: ProcessManager, seconds: float) -> None:
    end = lowlevel.now() + seconds
    while lowlevel.now() < end:
        manager.wait(end)


def test_a_watcher_is_served_its_fd_and_its_deadline(manager):
    watcher = PipeWatcher()
    try:
        manager.add_watcher(watcher)
        os.write(watcher.w, b"ping")
        wait_for(lambda: manager.wait(lowlevel.now() + 1) is not None and watcher.read, 5,
                 what="the watcher to read its pipe")
        assert watcher.read == [b"ping"]
        due = lowlevel.now() + 0.05
        watcher.deadline = due
        wait_for(lambda: manager.wait(lowlevel.now() + 1) is not None
                 and watcher.deadlines_served, 5, what="the watcher's deadline")
        assert watcher.deadlines_served[0] >= due
        manager.remove_watcher(watcher)
        os.write(watcher.w, b"late")
        wait_until_quiet(manager, 0.05)
        assert watcher.read == [b"ping"], "an fd no longer watched is not read"
    finally:
        watcher.close()


def test_a_raising_watcher_is_logged_and_the_loop_goes_on(manager, caplog):
    watcher = PipeWatcher(fail=True)
    try:
        manager.add_watcher(watcher)
        os.write(watcher.w, b"x")
        with caplog.at_level(logging.ERROR, logger="pyse-test-manager"):
            wait_for(lambda: manager.wait(lowlevel.now() + 1) is not None and watcher.read, 5,
                     what="the watcher to be called")
        assert "RuntimeError: a watcher bug" in caplog.text
        os.write(watcher.w, b"y")
        wait_for(lambda: manager.wait(lowlevel.now() + 1) is not None and len(watcher.read) == 2,
                 5, what="the next readiness")
    finally:
        watcher.close()


def test_children_do_not_inherit_the_watched_fds(manager):
    watcher = PipeWatcher()
    report_r, report_w = os.pipe()
    try:
        manager.add_watcher(watcher)
        manager.wait(lowlevel.now() + 0.01)   # the loop watches it from now on

        def child_main(link):
            os.write(report_w, " ".join(map(str, open_fds(os.getpid()))).encode())
            return 0

        child = manager.fork("Child", ChildRole(), child_main, kill_config(),
                             close_in_child=[report_r])
        os.close(report_w)
        report_w = -1
        fds = {int(fd) for fd in os.read(report_r, 4096).split()}
        assert watcher.r not in fds, "the child kept an fd the parent's loop serves"
        wait_pid_exit(child.pid, 10)
    finally:
        watcher.close()
        close_quietly(report_r, *([report_w] if report_w >= 0 else []))
        for pid in list(manager.children):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
