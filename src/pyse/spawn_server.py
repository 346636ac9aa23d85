"""``worker_type: "spawn"``: one external command per worker.

The worker's ``spawn(process_manager)`` hook calls
``process_manager.spawn(env, *cmd)`` once.  The command runs as a child of
the server, watched by the same C loop, kill escalation and restart logic
as a process worker (this class is a ProcessServer that execs instead of
running Python in the child).

Heartbeats.  The child finds the write end of its heartbeat pipe in the
environment variable ``PYSE_HEARTBEAT_FD`` (and the advised interval in
``PYSE_HEARTBEAT_INTERVAL``).  ServerEngine gives spawned programs no
heartbeat at all (it only watches the pipe's end of file), since most
programs know nothing of it.  pyse keeps that default and lets a program
opt in: the heartbeat timeout (``worker_heartbeat_timeout``) applies to a
child only once it has written to the fd at least once.  As in
ServerEngine, the pipe's end of file (every copy of the write end closed)
means the program is going away: an immediate stop follows.

Other differences from a process worker: USR2 sends ``worker_reload_signal``
to each command (nothing when unset); CONT is not passed on (an external
program has no sigdump); if the server dies, the kernel sends the commands
TERM (``PR_SET_PDEATHSIG``), so none is left behind.
"""
from __future__ import annotations

import dataclasses
import os
import select
import signal
from typing import Any, Mapping, Optional

from pyse import lowlevel, privilege
from pyse.lowlevel import Event, EventKind, KillConfig
from pyse.multi_worker_server import WorkerSlot
from pyse.process_server import ProcessServer
from pyse.signals import GRACEFUL_STOP, IMMEDIATE_RESTART, IMMEDIATE_STOP

#: seconds the server waits for a forked command to exec (or fail to) before
#: it goes back to its loop and monitors the child anyway
EXEC_WAIT = 5.0

HEARTBEAT_FD_ENV = "PYSE_HEARTBEAT_FD"
HEARTBEAT_INTERVAL_ENV = "PYSE_HEARTBEAT_INTERVAL"
#: the exit code of a child whose exec failed (a shell's "command not found")
EXIT_EXEC_FAILED = 127
#: signals whose SIG_IGN would survive exec: the ones Python ignores (a
#: program expects them at their defaults; subprocess resets them too), and
#: QUIT and HUP, which must kill (an inherited nohup-style SIG_IGN would turn
#: the immediate stop into a wait for the KILL step)
_RESET_BEFORE_EXEC = (IMMEDIATE_STOP, IMMEDIATE_RESTART, *(
    getattr(signal, n) for n in ("SIGPIPE", "SIGXFZ", "SIGXFSZ") if hasattr(signal, n)))


class ProcessManager:
    """What a spawn worker's ``spawn(process_manager)`` receives."""

    def __init__(self, server: "SpawnServer", worker_id: int) -> None:
        self._server = server
        self.worker_id = worker_id
        #: (pid, heartbeat read end) once spawn() started the command
        self.child: Optional[tuple[int, int]] = None

    def spawn(self, env: Optional[Mapping[str, str]], *cmd: str) -> int:
        """Runs cmd with env added to the server's environment (a None value
        removes the variable, as in Ruby); returns its pid.  A single string
        with spaces runs through ``/bin/sh -c``, so a command line written
        for Ruby's ``Process.spawn`` works unchanged; a first argument that
        is a string is the command itself (no env)."""
        if isinstance(env, str):
            env, cmd = None, (env, *cmd)
        argv = [os.fspath(a) for a in cmd]
        if not argv:
            raise ValueError("process_manager.spawn() needs a command")
        if len(argv) == 1 and any(c.isspace() for c in argv[0]):
            argv = ["/bin/sh", "-c", argv[0]]
        if self.child is not None:
            raise RuntimeError(f"worker {self.worker_id}: spawn() may start one command, "
                               f"and already started pid {self.child[0]}")
        full_env = dict(os.environ)
        for key, value in (env or {}).items():
            if value is None:
                full_env.pop(str(key), None)
            else:
                full_env[str(key)] = str(value)
        self.child = self._server.spawn_command(self.worker_id, argv, full_env)
        return self.child[0]


class SpawnServer(ProcessServer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        #: pids that have written a heartbeat: the timeout applies to them
        self._beating: set[int] = set()
        super().__init__(*args, **kwargs)

    # -- starting a command --------------------------------------------------
    def start_worker(self, slot: WorkerSlot, now: float) -> None:
        worker = self.create_worker(slot.worker_id)
        worker.before_fork()
        manager = ProcessManager(self, slot.worker_id)
        try:
            worker.spawn(manager)
        except Exception:
            if manager.child is None:
                raise  # nothing runs: a failed start (logged, backoff)
            # The command runs: the slot must keep it whatever spawn() did next.
            self.logger.exception("Worker %d: spawn() raised after starting pid %d",
                                  slot.worker_id, manager.child[0])
        if manager.child is None:
            raise RuntimeError(f"worker {slot.worker_id}: spawn(process_manager) returned "
                               f"without calling process_manager.spawn(env, *cmd)")
        pid, heartbeat_r = manager.child
        self.adopt_worker(slot, worker, pid, heartbeat_r, now)

    def spawn_command(self, worker_id: int, argv: list[str], env: dict) -> tuple[int, int]:
        """Forks and execs argv; returns (pid, heartbeat read end).  An exec
        failure is logged here; the child then exits with 127."""
        error_r, error_w = os.pipe()   # close-on-exec: EOF means exec worked
        server_pid = os.getpid()
        env[HEARTBEAT_INTERVAL_ENV] = repr(float(self.config.get("worker_heartbeat_interval", 1.0)))
        loop = self.loop
        config = self.config

        def child_main(heartbeat_w: int, close_fds: list[int], restore_mask: set) -> None:
            exec_command(argv, env, loop=loop, server_pid=server_pid, heartbeat_fd=heartbeat_w,
                         close_fds=[*close_fds, error_r], error_fd=error_w,
                         restore_mask=restore_mask, config=config)

        try:
            try:
                pid, heartbeat_r = self.fork_child(child_main)
            finally:
                os.close(error_w)   # now only the child holds it, until its exec
            error = read_until_exec(error_r, EXEC_WAIT)
        finally:
            os.close(error_r)
        if error is None:
            # The child is alive but has not exec'd: monitor it anyway (the
            # escalation can end it) rather than freeze the server's loop.
            self.logger.warning("Worker %d: %r did not exec within %g s", worker_id, argv[0],
                                EXEC_WAIT)
        elif error:
            self.logger.error("Worker %d: cannot run %r: %s", worker_id, argv[0],
                              error.decode(errors="replace"))
        return pid, heartbeat_r

    # -- heartbeats ----------------------------------------------------------
    def kill_config_for(self, pid: int) -> KillConfig:
        if pid in self._beating:
            return self.kill_config
        # Not beating yet: it may never (most programs don't), so no timeout.
        return dataclasses.replace(self.kill_config, heartbeat_timeout=float("inf"))

    def dispatch_event(self, event: Event) -> None:
        if event.kind is EventKind.HEARTBEAT and event.pid not in self._beating:
            slot = self._by_pid.get(event.pid)
            if slot is not None and self.loop is not None:
                self._beating.add(event.pid)
                self.loop.set_child_config(event.pid, self.kill_config)
                self.logger.debug("Worker %d (pid %d) writes heartbeats: its heartbeat "
                                  "timeout now applies", slot.worker_id, event.pid)
        elif event.kind is EventKind.EXITED:
            self._beating.discard(event.pid)
        super().dispatch_event(event)

    # -- signals to the commands ---------------------------------------------
    def send_reload(self, slot: WorkerSlot) -> None:
        signo = self.config.get("worker_reload_signal")
        if signo is not None:
            self.signal_worker(slot, signo)

    def send_dump(self, slot: WorkerSlot) -> None:
        """An external program has no sigdump: CONT stays with the server."""


def read_until_exec(fd: int, timeout: float) -> Optional[bytes]:
    """Reads the exec-error pipe to its end: b"" once the exec succeeded (the
    close-on-exec write end closed), the error text if it failed, None if
    the child neither exec'd nor failed within timeout seconds."""
    deadline = lowlevel.now() + timeout
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    chunks = []
    while True:
        remaining = deadline - lowlevel.now()
        if remaining <= 0 or not poller.poll(remaining * 1000):
            return None
        chunk = os.read(fd, 4096)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def exec_command(argv: list[str], env: dict, *, loop: Optional[lowlevel.Loop], server_pid: int,
                 heartbeat_fd: int, close_fds: list[int], error_fd: int,
                 restore_mask: set, config: Optional[dict] = None) -> None:
    """In the forked child: drop the server's loop and fds, switch to
    the identity ``config`` names (worker_chuser, worker_chgroup, worker_chumask), offer the
    heartbeat fd, restore signals, exec.  Never returns."""
    try:
        if loop is not None:
            loop.abandon_in_child(close_fds)
        else:
            lowlevel.child_after_fork(close_fds)
        if config is not None:
            privilege.change_from_config(config, "worker_")
        # The command cannot watch a lifeline it knows nothing of: the kernel
        # sends it TERM (a graceful stop) when the server dies.  Set after the
        # identity change, which clears it.
        if lowlevel.set_parent_death_signal(GRACEFUL_STOP, server_pid):
            os._exit(EXIT_EXEC_FAILED)  # the server died before the exec
        for signo in _RESET_BEFORE_EXEC:
            signal.signal(signo, signal.SIG_DFL)
        os.set_inheritable(heartbeat_fd, True)
        env[HEARTBEAT_FD_ENV] = str(heartbeat_fd)
        signal.pthread_sigmask(signal.SIG_SETMASK, restore_mask)
        os.execvpe(argv[0], argv, env)
    except (OSError, privilege.PrivilegeError) as e:
        os.write(error_fd, f"{getattr(e, 'strerror', None) or e}".encode())
    finally:
        os._exit(EXIT_EXEC_FAILED)
