"""``worker_type: "spawn"``: one external command per worker.

The worker's ``spawn(process_manager)`` hook calls
``process_manager.spawn(env, *cmd)`` once.  The command runs as a child of
the server, watched by the same C loop, kill escalation and restart logic
as a process worker (this class is a ProcessServer whose children exec
instead of running Python).

Heartbeats.  The child finds the write end of its heartbeat pipe in the
environment variable ``PYSE_HEARTBEAT_FD`` (and the advised interval in
``PYSE_HEARTBEAT_INTERVAL``).  ServerEngine gives spawned programs no
heartbeat at all (it only watches the pipe's end of file), since most
programs know nothing of it.  pyse keeps that default and lets a program
opt in: the heartbeat timeout (``worker_heartbeat_timeout``) applies to a
child only once it has written to the fd at least once (any bytes).  As in
ServerEngine, the pipe's end of file (every copy of the write end closed)
means the program is going away: an immediate stop follows.

Other differences from a process worker: USR2 sends ``worker_reload_signal``
to each command (nothing when unset); CONT is not passed on (an external
program has no sigdump); if the server dies, the kernel sends the commands
TERM (``PR_SET_PDEATHSIG``), so none is left behind.

A server with a socket manager (``server.socket_manager``) puts its broker's
path and token into each command's environment, so that the command asks
for its listening sockets with ``pyse.SocketManager.Client()`` (or speaks
the broker's protocol itself).
"""
from __future__ import annotations

import os
import select
from typing import Mapping, Optional, Union

from pyse import lowlevel
from pyse.lowlevel import Event, EventKind
from pyse.multi_worker_server import WorkerSlot
from pyse.process_manager import ChildRole, ParentLink, kill_config
from pyse.process_server import ProcessServer
from pyse.socket_manager_tree import spawn_environment

#: seconds the server waits for a forked command to exec (or fail to) before
#: it goes back to its loop and monitors the child anyway
EXEC_WAIT = 5.0

HEARTBEAT_FD_ENV = "PYSE_HEARTBEAT_FD"
HEARTBEAT_INTERVAL_ENV = "PYSE_HEARTBEAT_INTERVAL"
#: the exit code of a child whose exec failed (a shell's "command not found")
EXIT_EXEC_FAILED = 127


class CommandLauncher:
    """What a spawn worker's ``spawn(process_manager)`` hook receives."""

    def __init__(self, server: "SpawnServer", worker_id: int) -> None:
        self._server = server
        self.worker_id = worker_id
        #: the pid of the command once spawn() started it
        self.pid: Optional[int] = None
        #: whether its exec is known to have worked
        self.exec_ok = False

    def spawn(self, env: Union[Mapping[str, Optional[str]], str, None],
              *cmd: Union[str, os.PathLike[str]]) -> int:
        """Runs cmd with env added to the server's environment (a None value
        removes the variable, as in Ruby); returns its pid.  A single string
        with spaces runs through ``/bin/sh -c``, so a command line written
        for Ruby's ``Process.spawn`` works unchanged; a first argument that
        is a string is the command itself (no env)."""
        if isinstance(env, str):
            cmd = (env, *cmd)
            env = None
        argv = [os.fspath(a) for a in cmd]
        if not argv:
            raise ValueError("process_manager.spawn() needs a command")
        if len(argv) == 1 and any(c.isspace() for c in argv[0]):
            argv = ["/bin/sh", "-c", argv[0]]
        if self.pid is not None:
            raise RuntimeError(f"worker {self.worker_id}: spawn() may start one command, "
                               f"and already started pid {self.pid}")
        # The socket manager's path and token come first: env may override them.
        full_env = {**os.environ, **spawn_environment(self._server)}
        for key, value in (env or {}).items():
            if value is None:
                full_env.pop(str(key), None)
            else:
                full_env[str(key)] = str(value)
        self.pid, self.exec_ok = self._server.spawn_command(self.worker_id, argv, full_env)
        return self.pid


class SpawnServer(ProcessServer):
    # -- starting a command --------------------------------------------------
    def start_worker(self, slot: WorkerSlot, now: float) -> None:
        worker = self.create_worker(slot.worker_id)
        worker.before_fork()
        launcher = CommandLauncher(self, slot.worker_id)
        try:
            worker.spawn(launcher)
        except Exception:
            if launcher.pid is None:
                raise  # nothing runs: a failed start (logged, backoff)
            # The command runs: the slot must keep it whatever spawn() did next.
            self.logger.exception("Worker %d: spawn() raised after starting pid %d",
                                  slot.worker_id, launcher.pid)
        if launcher.pid is None:
            raise RuntimeError(f"worker {slot.worker_id}: spawn(process_manager) returned "
                               f"without calling process_manager.spawn(env, *cmd)")
        self.adopt_worker(slot, worker, launcher.pid)
        if launcher.exec_ok:
            # A program may never beat: it is up once it runs.
            self.worker_up(slot)

    def spawn_command(self, worker_id: int, argv: list[str], env: dict[str, str]) -> tuple[int, bool]:
        """Forks and execs argv; returns its pid and whether the exec is known
        to have worked.  An exec failure is logged here; the child then exits
        with 127."""
        error_r, error_w = os.pipe()   # close-on-exec: EOF means exec worked
        env[HEARTBEAT_INTERVAL_ENV] = repr(float(self.config["worker_heartbeat_interval"]))
        # No loop of its own: an exec'd program gets default dispositions.
        role = ChildRole(identity=(self.config, "worker_"))
        try:
            try:
                child = self.manager.fork(
                    f"Worker {worker_id}", role,
                    lambda link: exec_command(argv, env, link, error_w),
                    kill_config(self.config, "worker_"), failure_code=EXIT_EXEC_FAILED,
                    heartbeat_optional=True, close_in_child=[error_r])
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
        return child.pid, error == b""

    def dispatch_event(self, event: Event) -> None:
        if event.kind is EventKind.HEARTBEAT:
            slot = self._by_pid.get(event.pid)
            if slot is not None:
                self.logger.debug("Worker %d (pid %d) writes heartbeats: its heartbeat timeout "
                                  "now applies", slot.worker_id, event.pid)
        super().dispatch_event(event)

    # -- signals to the commands ---------------------------------------------
    def send_reload(self, slot: WorkerSlot) -> None:
        signo = self.config["worker_reload_signal"]
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
    chunks: list[bytes] = []
    while True:
        remaining = deadline - lowlevel.now()
        if remaining <= 0 or not poller.poll(remaining * 1000):
            return None
        chunk = os.read(fd, 4096)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def exec_command(argv: list[str], env: dict[str, str], link: ParentLink, error_fd: int) -> int:
    """In the forked, set-up child: offer the heartbeat fd, exec.  Returns
    (to exit with) only if the exec failed, after writing why to error_fd."""
    if link.gone_at is not None:
        return EXIT_EXEC_FAILED  # the server died before we could start
    try:
        os.set_inheritable(link.heartbeat_fd, True)
        env[HEARTBEAT_FD_ENV] = str(link.heartbeat_fd)
        os.execvpe(argv[0], argv, env)
    except OSError as e:
        os.write(error_fd, (e.strerror or str(e)).encode())
    return EXIT_EXEC_FAILED
