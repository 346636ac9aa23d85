"""``daemonize``: the launcher, the intermediate process and the daemon.

The launcher forks; the intermediate calls ``setsid`` (a new session, no
controlling terminal), forks the daemon and exits at once, and the launcher
reaps it (no zombie, and the daemon, not being a session leader, can never
acquire a terminal).  The daemon tells the launcher over a pipe, one line
each: ``pid N`` at once, then ``ok`` once the server is up (see
:mod:`pyse.daemon` for what "up" means) or ``error <reason>``.  Only after
``ok`` does the launcher publish the pid file and exit 0.
"""
from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Iterable, NoReturn, Optional

from pyse import pidfile
from pyse.log_capture import flush_std_streams
from pyse.signals import GRACEFUL_STOP

if TYPE_CHECKING:  # pragma: no cover
    from pyse.daemon import Daemon


class StartupError(RuntimeError):
    """The daemon could not start; the message is what the launcher prints."""


class ReadyPipe:
    """The daemon's side of the pipe its launcher waits on.  One line each:
    ``pid N`` at once, then ``ok`` or ``error <message>``."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def send(self, line: str) -> None:
        if self.fd < 0:
            return
        data = (line.replace("\n", " ") + "\n").encode("utf-8", "backslashreplace")
        try:
            os.write(self.fd, data)
        except BrokenPipeError:
            pass  # the launcher is gone (killed): nobody is waiting any more

    def ready(self) -> None:
        self.send("ok")
        self.close()

    def failed(self, message: str) -> None:
        self.send("error " + message)
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def report_startup_error(message: str) -> None:
    try:
        sys.stderr.write(f"pyse: cannot start: {message}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass  # no stderr to write to; the exit status still says it


def launch(daemon: Daemon, pid_file: Optional[pidfile.PidFile], error_code: int) -> int:
    """The launcher's side of ``daemonize``: double fork, then wait until
    the daemon is up (0) or failed (error_code, reason on stderr)."""
    read_fd, write_fd = os.pipe()
    flush_std_streams()
    pid = os.fork()
    if pid == 0:
        intermediate(daemon, read_fd, write_fd, pid_file, error_code)
    os.close(write_fd)
    # The intermediate exits at once; reap it so no zombie stays behind.
    os.waitpid(pid, 0)
    with os.fdopen(read_fd, "rb") as reader:
        daemon_pid, outcome = read_ready(reader)
    if outcome != "ok":
        if pid_file is not None:
            pid_file.abandon()
        report_startup_error(outcome or "the daemon exited during its start (see its log)")
        return error_code
    daemon.pid = daemon_pid
    if pid_file is not None:
        try:
            pid_file.publish(daemon_pid)
        except (OSError, pidfile.PidFileError) as e:
            # Lost a race with another start: ours must not run unannounced.
            pid_file.abandon()
            os.kill(daemon_pid, GRACEFUL_STOP)
            report_startup_error(f"pid file {pid_file.path!r}: {e}")
            return error_code
        pid_file.close()  # the daemon keeps the lock
    return 0

def intermediate(daemon: Daemon, read_fd: int, write_fd: int, pid_file: Optional[pidfile.PidFile],
                 error_code: int) -> NoReturn:
    """The first child: a new session, then the daemon; never returns."""
    code = error_code
    try:
        os.close(read_fd)
        os.setsid()
        if os.fork() == 0:
            daemon_process(daemon, write_fd, pid_file, error_code)
        code = 0
    finally:
        os._exit(code)

def daemon_process(daemon: Daemon, write_fd: int, pid_file: Optional[pidfile.PidFile],
                   error_code: int) -> NoReturn:
    """The daemon (the grandchild): serves, then exits; never returns."""
    code = error_code
    ready = ReadyPipe(write_fd)
    try:
        daemon.pid = os.getpid()
        ready.send(f"pid {daemon.pid}")
        if pid_file is not None:
            pid_file.adopt_in_daemon()
        redirect_stdio_to_null()
        code = daemon.serve(ready)
    except StartupError as e:
        ready.failed(str(e))
    except BaseException as e:
        ready.failed(f"{type(e).__name__}: {e}")
        if isinstance(e, SystemExit) and isinstance(e.code, int):
            code = e.code
    finally:
        ready.close()
        flush_std_streams()
        os._exit(code)


def read_ready(reader: Iterable[bytes]) -> tuple[int, str]:
    """(daemon pid, "ok" or the error message or "" at end of file)."""
    daemon_pid = 0
    for raw in reader:
        line = raw.decode("utf-8", "replace").rstrip("\n")
        word, _, rest = line.partition(" ")
        if word == "pid":
            daemon_pid = int(rest)
        elif word == "ok":
            return daemon_pid, "ok"
        elif word == "error":
            return daemon_pid, rest
    return daemon_pid, ""


def redirect_stdio_to_null() -> None:
    """The daemon has no terminal: fds 0, 1 and 2 go to /dev/null (logging
    may then capture 1 and 2 into the log file)."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    if null > 2:
        os.close(null)
