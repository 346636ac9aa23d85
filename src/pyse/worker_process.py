"""The worker process: what runs between os.fork() and os._exit().

Three threads at most:

- the main thread runs the user's ``run()``, as ServerEngine does, so user
  code may install its own signal handlers;
- the control thread waits in the C loop (without the GIL) for signals,
  the lifeline's hangup and the next heartbeat, and writes the heartbeats.
  It needs the GIL to write, so a worker stuck holding the GIL stops beating
  and the server's heartbeat timeout catches it;
- the hook thread runs ``stop()``, ``reload()`` and ``dump()`` one at a time,
  so a slow hook never delays a heartbeat or the orphan deadline.
"""
from __future__ import annotations

import os
import queue
import signal
import sys
import threading
from typing import Any, Callable, Iterable, Optional

from pyse import lowlevel, privilege
from pyse.lowlevel import EventKind
from pyse.parent_link import ParentLink
from pyse.signals import (GRACEFUL_STOP, IMMEDIATE_RESTART, IMMEDIATE_STOP, WORKER_ACTIONS,
                          WORKER_SIGNALS, signal_name)

EXIT_RUN_RAISED = 1
EXIT_ORPHANED = 1
#: seconds between the orphan timeout and the C-armed SIGKILL
ORPHAN_KILL_GRACE = 1.0


def main(worker: Any, *, loop: Optional[lowlevel.Loop], server_pid: int, heartbeat_fd: int,
         lifeline_fd: int, close_fds: Iterable[int], restore_mask: Iterable[int]) -> None:
    """Runs the worker in a freshly forked child and exits; never returns."""
    code = EXIT_RUN_RAISED
    try:
        if loop is not None:
            loop.abandon_in_child(close_fds)
        else:
            lowlevel.child_after_fork(close_fds)
        interval = float(worker.config.get("worker_heartbeat_interval", 1.0))
        link = ParentLink(server_pid, heartbeat_fd, lifeline_fd, interval)
        code = WorkerProcess(worker, link, set(restore_mask)).main()
    except BaseException:
        try:
            worker.logger.exception("Worker %d failed", worker.worker_id)
        except BaseException:
            pass
    finally:
        flush_everything(worker)
        os._exit(code)


def flush_everything(worker: Any) -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass
    close = getattr(getattr(worker.server, "_log_setup", None), "close", None)
    if close is not None:
        try:
            close()
        except OSError:
            pass


class WorkerProcess:
    def __init__(self, worker: Any, link: ParentLink, restore_mask: set) -> None:
        self.worker = worker
        self.logger = worker.logger
        self.config = worker.config
        self.link = link
        self.restore_mask = restore_mask
        self.orphan_timeout = float(self.config.get("worker_orphan_timeout", 10.0))
        self.hooks: "queue.SimpleQueue[Optional[Callable[[], None]]]" = queue.SimpleQueue()
        self.loop: Optional[lowlevel.Loop] = None

    # -- setup ---------------------------------------------------------------
    def main(self) -> int:
        wid = self.worker.worker_id
        self.set_process_name()
        setup = getattr(self.worker.server, "_log_setup", None)
        if setup is not None and hasattr(setup, "after_fork_child"):
            setup.after_fork_child()
        self.drop_privileges()
        # The server may already be gone (it died between fork and here): then
        # PR_SET_PDEATHSIG would never fire, and the lifeline says so anyway.
        parent_gone = lowlevel.set_parent_death_signal(GRACEFUL_STOP, self.link.parent_pid)
        # The lifeline arms the kill timer only if the control thread is back
        # in poll; when another thread holds the GIL it never gets there.  The
        # death signal's C handler arms it without the GIL.
        lowlevel.prepare_orphan_kill(self.link.parent_pid,
                                     self.orphan_timeout + ORPHAN_KILL_GRACE)

        loop = self.loop = lowlevel.Loop(reap_any=False)
        loop.own_signals(WORKER_SIGNALS)
        # Python exits at the orphan timeout; the C timer is the backstop for
        # a worker whose Python cannot run any more (a thread holds the GIL).
        loop.set_lifeline_fd(self.link.lifeline_fd,
                             orphan_kill_delay=self.orphan_timeout + ORPHAN_KILL_GRACE)
        # QUIT and HUP kill a worker: that is what "immediate" means.  Make sure
        # an inherited SIG_IGN (nohup) does not change that.
        for signo in (IMMEDIATE_STOP, IMMEDIATE_RESTART):
            signal.signal(signo, signal.SIG_DFL)
        threading.Thread(target=self.run_hooks, name="pyse-hooks", daemon=True).start()
        threading.Thread(target=self.control, name="pyse-control", daemon=True).start()
        # Signals sent before now waited, blocked, for the handlers above.
        signal.pthread_sigmask(signal.SIG_SETMASK, self.restore_mask)
        if parent_gone:
            self.parent_gone()
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

    def set_process_name(self) -> None:
        fmt = self.config.get("worker_process_name")
        if fmt:
            import setproctitle

            from pyse.config import format_process_name

            setproctitle.setproctitle(format_process_name(fmt, self.worker.worker_id))

    def drop_privileges(self) -> None:
        privilege.change_from_config(self.config, "worker_")

    # -- the control thread --------------------------------------------------
    def control(self) -> None:
        assert self.loop is not None
        link = self.link
        try:
            while True:
                deadline = link.next_beat
                if link.gone_at is not None:
                    deadline = min(deadline, link.gone_at + self.orphan_timeout)
                for event in self.loop.wait(deadline):
                    if event.kind is EventKind.SIGNAL:
                        self.queue_signal(event.status)
                    elif event.kind is EventKind.PARENT_GONE:
                        self.parent_gone()
                now = lowlevel.now()
                if link.gone_at is not None and now >= link.gone_at + self.orphan_timeout:
                    self.logger.error("Worker %d: run() did not return within %g s of the "
                                      "server's death; exiting", self.worker.worker_id,
                                      self.orphan_timeout)
                    flush_everything(self.worker)
                    os._exit(EXIT_ORPHANED)
                if not link.beat_if_due(now):
                    self.parent_gone()
        except BaseException:
            self.logger.exception("Worker %d: control thread failed; exiting",
                                  self.worker.worker_id)
            flush_everything(self.worker)
            os._exit(EXIT_RUN_RAISED)

    def parent_gone(self) -> None:
        if not self.link.mark_gone(lowlevel.now()):
            return
        self.logger.warning("Worker %d: the server (pid %d) is gone; stopping",
                            self.worker.worker_id, self.link.parent_pid)
        self.hooks.put(self.worker.stop)

    def queue_signal(self, signo: int) -> None:
        action = WORKER_ACTIONS.get(signo)  # type: ignore[call-overload]
        if action is None:
            return
        self.logger.debug("Worker %d received %s", self.worker.worker_id, signal_name(signo))
        getattr(self, "handle_" + action)()

    def handle_stop(self) -> None:
        self.hooks.put(self.worker.stop)

    def handle_reload(self) -> None:
        self.hooks.put(self.reload)

    def handle_dump(self) -> None:
        self.hooks.put(self.worker.dump)

    def reload(self) -> None:
        setup = getattr(self.worker.server, "_log_setup", None)
        if setup is not None:
            try:
                # log and log_level from the reloaded source, then reopen
                setup.reload_in_child(getattr(self.worker.server, "_config_source", None))
            except (OSError, ValueError) as e:  # ValueError: pyse.ConfigError
                self.logger.error("Worker %d: could not reload the log settings: %s",
                                  self.worker.worker_id, e)
        self.worker.reload()

    # -- the hook thread -----------------------------------------------------
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
