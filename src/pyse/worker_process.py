"""The worker process: what runs in a forked worker, after its set-up
(:func:`pyse.process_manager.setup_child`), until ``os._exit()``.

Two threads, three at most:

- the main thread runs the user's ``run()``, as ServerEngine does, so user
  code may install its own signal handlers;
- the control thread waits in the worker's C loop (without the GIL) for
  signals and the lifeline's hangup.  The loop writes a heartbeat each time
  the thread enters a wait once ``worker_heartbeat_interval`` has passed;
  entering needs the GIL, so a worker stuck holding the GIL stops beating
  and the server's heartbeat timeout catches it;
- the hook thread, started at the first hook, runs ``stop()``, ``reload()``
  and ``dump()`` one at a time, so a slow hook never delays a heartbeat or
  the orphan deadline.
"""
from __future__ import annotations

import functools
import os
import pickle
import queue
import sys
import threading
from typing import Any, Callable, Optional

from pyse import lowlevel, process_title
from pyse.child_messages import MessageReader
from pyse.config import format_process_name
from pyse.lowlevel import EventKind
from pyse.process_manager import ORPHAN_KILL_GRACE, ChildRole, ParentLink
from pyse.signals import WORKER_ACTIONS, WORKER_SIGNALS, dumps_last, signal_name

EXIT_RUN_RAISED = 1
EXIT_ORPHANED = 1


def worker_role(config: dict[str, Any]) -> ChildRole:
    """How a worker process is set up after fork (see setup_child)."""
    return ChildRole(signals=WORKER_SIGNALS,
                     heartbeat_interval=config["worker_heartbeat_interval"],
                     orphan_kill_delay=config["worker_orphan_timeout"] + ORPHAN_KILL_GRACE,
                     identity=(config, "worker_"), messages=True)


# -- the reload message: the server's configuration, for a running worker ---------
#
# At USR2 the server loads the configuration once and sends the result to
# every worker process, which puts it in place before its reload() runs; a
# reload whose configuration is bad changes no one's.  Calling the config
# callable again in each worker would call it once per worker, and could
# read a file in the middle of its rewrite, so that workers disagreed.
# Only plain data travels (numbers, strings, lists, dicts...): an object in
# the configuration (a logger, a stream, a class) cannot cross processes,
# so a worker keeps the one it was forked with.

class Inherited:
    """Stands for a configuration value that stays as the worker has it."""


def _plain(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return True
    if isinstance(value, (list, tuple, set, frozenset)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def encode_reload(config: dict[str, Any]) -> bytes:
    """The reload message for a worker: the configuration, objects left out."""
    sent = {key: value if _plain(value) else Inherited for key, value in config.items()}
    return pickle.dumps({"reload": sent}, protocol=pickle.HIGHEST_PROTOCOL)


def received_config(message: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
    """The worker's new configuration from a reload message."""
    return {key: current.get(key) if value is Inherited else value
            for key, value in message["reload"].items()}


def main(worker: Any, link: ParentLink) -> int:
    """Runs the worker in its freshly set-up process; returns the exit code."""
    code = EXIT_RUN_RAISED
    try:
        code = WorkerProcess(worker, link).main()
    except BaseException:
        worker.logger.exception("Worker %d failed", worker.worker_id)
    finally:
        worker.server.close_log()
    return code


class WorkerProcess:
    def __init__(self, worker: Any, link: ParentLink) -> None:
        assert link.loop is not None, "a worker's set-up makes its loop"
        self.worker = worker
        self.logger = worker.logger
        self.config = worker.config
        self.link = link
        self.loop: lowlevel.Loop = link.loop
        self.orphan_timeout = float(self.config["worker_orphan_timeout"])
        self.hooks: "queue.SimpleQueue[Optional[Callable[[], None]]]" = queue.SimpleQueue()
        self.hook_thread: Optional[threading.Thread] = None
        self.hook_lock = threading.Lock()
        self.stop_called_for_orphan = False
        #: a stop was asked for: a CONT then writes no dump
        self.stopping = False
        self.messages = MessageReader(link.message_fd) if link.message_fd >= 0 else None

    # -- the main thread -------------------------------------------------------
    def main(self) -> int:
        wid = self.worker.worker_id
        fmt = self.config["worker_process_name"]
        process_title.set_title(format_process_name(fmt, wid) if fmt else None, f"worker {wid}",
                                type(self.worker))
        self.worker.server.log_after_fork(threads_allowed=True)
        threading.Thread(target=self.control, name="pyse-control", daemon=True).start()
        if self.link.gone_at is not None:
            self.parent_gone()  # it died before our PR_SET_PDEATHSIG was set
        self.announce_up()
        try:
            self.worker.run()
        except SystemExit as e:
            # sys.exit(n) in run() is how a worker reports an exit code, e.g.
            # one of unrecoverable_exit_codes.
            return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except Exception:
            self.logger.exception("Worker %d: run() raised", wid)
            return EXIT_RUN_RAISED
        return 0

    def announce_up(self) -> None:
        """A heartbeat now, from the main thread, before run(): the server
        counts a worker as up at its first beat, and the control thread's
        first one may come too late for a run() that returns at once."""
        try:
            os.write(self.link.heartbeat_fd, lowlevel.now_ns().to_bytes(8, sys.byteorder,
                                                                        signed=True))
        except (BlockingIOError, BrokenPipeError):
            pass  # a full pipe holds beats enough; a broken one: the server is gone

    # -- the control thread ----------------------------------------------------
    def control(self) -> None:
        if self.messages is not None:
            self.loop.watch_fd(self.messages.fd)
        try:
            while True:
                gone_at = self.link.gone_at
                deadline = None if gone_at is None else gone_at + self.orphan_timeout
                for event in dumps_last(self.loop.wait(deadline)):
                    if event.kind is EventKind.SIGNAL:
                        self.on_signal(event.status)
                    elif event.kind is EventKind.PARENT_GONE:
                        self.parent_gone()
                    elif event.kind is EventKind.FD_READY:
                        self.read_messages()
                if deadline is not None and lowlevel.now() >= deadline:
                    self.logger.error("Worker %d: run() did not return within %g s of the "
                                      "server's death; exiting", self.worker.worker_id,
                                      self.orphan_timeout)
                    self.exit_now(EXIT_ORPHANED)
        except BaseException:
            self.logger.exception("Worker %d: control thread failed; exiting",
                                  self.worker.worker_id)
            self.exit_now(EXIT_RUN_RAISED)

    def exit_now(self, code: int) -> None:
        self.worker.server.close_log()
        os._exit(code)

    def parent_gone(self) -> None:
        """The server died (lifeline hangup, or its death signal): stop()
        once, and the orphan deadline starts."""
        self.link.mark_gone(lowlevel.now())
        if self.stop_called_for_orphan:
            return
        self.stop_called_for_orphan = True
        self.logger.warning("Worker %d: the server (pid %d) is gone; stopping",
                            self.worker.worker_id, self.link.parent_pid)
        self.run_hook(self.worker.stop)

    def on_signal(self, signo: int) -> None:
        action = WORKER_ACTIONS.get(signo)
        if action is None:
            return
        if action == "stop" and os.getppid() != self.link.parent_pid:
            # PR_SET_PDEATHSIG's TERM: the same news as the lifeline's hangup.
            self.parent_gone()
            return
        self.logger.debug("Worker %d received %s", self.worker.worker_id, signal_name(signo))
        getattr(self, "handle_" + action)()

    def handle_stop(self) -> None:
        self.stopping = True
        self.run_hook(self.worker.stop)

    def handle_reload(self) -> None:
        self.run_hook(self.reload)

    def handle_dump(self) -> None:
        self.run_hook(self.dump_unless_stopping)

    def dump_unless_stopping(self) -> None:
        """Checked when the hook runs, not when CONT came: systemd and
        timeout(1) send CONT right after their TERM."""
        if not self.stopping and self.link.gone_at is None:
            self.worker.dump()

    def reload(self) -> None:
        """USR2 sent to this worker itself: the log reopened, reload()."""
        self.worker.server.reopen_log()
        self.worker.reload()

    # -- messages from the server ----------------------------------------------
    def read_messages(self) -> None:
        assert self.messages is not None
        for payload in self.messages.read_messages():
            message: dict[str, Any] = pickle.loads(payload)
            if "reload" in message:
                self.run_hook(functools.partial(self.reload_with, message))
        if self.messages.closed:
            # The server is gone; the lifeline says so too.
            self.loop.unwatch_fd(self.messages.fd)

    def reload_with(self, message: dict[str, Any]) -> None:
        """The server's reload: its new configuration in place (self.config
        of the worker), the log settings applied, then reload()."""
        server = self.worker.server
        new = received_config(message, server.config)
        server.config = new
        self.config = new
        server.apply_log_config(new, self.worker.worker_id)
        # After the log settings: at the new level, in the new format.
        self.logger.debug("Worker %d received the server's reload", self.worker.worker_id)
        self.worker.reload()

    # -- the hook thread ---------------------------------------------------------
    def run_hook(self, hook: Callable[[], None]) -> None:
        """Queues hook for the hook thread, started at the first hook (most
        workers never need one, and a worker's start should be quick)."""
        with self.hook_lock:
            if self.hook_thread is None:
                self.hook_thread = threading.Thread(target=self.run_hooks, name="pyse-hooks",
                                                    daemon=True)
                self.hook_thread.start()
        self.hooks.put(hook)

    def run_hooks(self) -> None:
        while True:
            hook = self.hooks.get()
            if hook is None:
                return
            try:
                hook()
            except Exception:
                self.logger.exception("Worker %d: %s() raised", self.worker.worker_id,
                                      getattr(hook, "__name__", "hook"))
