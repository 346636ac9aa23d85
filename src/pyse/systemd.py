"""systemd's notification protocol (``sd_notify``), spoken by the top
process only: the server, or the supervisor with ``supervisor: true``.

systemd hands a ``Type=notify`` service the address of a datagram socket in
``NOTIFY_SOCKET`` (a path, or ``@name`` for a name in the abstract
namespace) and, with ``WatchdogSec=``, the watchdog period in
``WATCHDOG_USEC`` and the pid it is meant for in ``WATCHDOG_PID``.  pyse
reads the three once, where the daemon starts, and removes them from its
environment at once, as sd_notify's ``unset_environment`` does: no worker,
no spawned command and no server under a supervisor may talk to systemd on
the service's behalf.  What the top process sends (see docs/systemd.md):

- ``READY=1`` once the first workers run (with ``STATUS=`` and ``MAINPID=``);
- ``RELOADING=1`` with ``MONOTONIC_USEC=`` when a reload (USR2) or a restart
  (USR1, HUP) begins, and ``READY=1`` once it is done;
- ``STOPPING=1`` when it begins to stop;
- ``STATUS=`` whenever the worker counts change;
- ``WATCHDOG=1`` every half period from its loop, only while the loop runs;
- ``MAINPID=`` with ``daemonize``: the launcher, which systemd started and
  takes for the main process, names the daemon (with ``READY=1``) just
  before it exits; the daemon holds its own messages back until the
  launcher has exited (:class:`LauncherWatch`), since systemd would refuse
  them before (``NotifyAccess=main``).

Each message goes out on a fresh socket (as sd_notify does), so no fd of
ours lingers for children to inherit; a send never blocks.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import dataclass, field
from typing import Callable, MutableMapping, Optional

from pyse import lowlevel
from pyse.watching import Timer

#: the variables systemd sets for the notification protocol; all three are
#: removed from the environment once read
NOTIFY_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def socket_address(value: str) -> str:
    """NOTIFY_SOCKET's value as an AF_UNIX address: a path, or ``@name``
    for ``\\0name`` in the abstract namespace.  ValueError for anything
    else, as sd_notify refuses it."""
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    raise ValueError(f"NOTIFY_SOCKET={value!r}: expected an absolute path or @name")


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, as ``MONOTONIC_USEC=`` wants it."""
    return lowlevel.now_ns() // 1000


@dataclass
class Notifier:
    """Sends notifications to the service manager at ``address``.

    ``watchdog_interval``: systemd's watchdog period in seconds (None: no
    watchdog for this process).  ``setup_problems``: what was wrong with the
    environment, for the log once there is one."""

    address: str
    watchdog_interval: Optional[float] = None
    setup_problems: list[str] = field(default_factory=list)
    #: in the daemon of a daemonized start: its launcher announces the
    #: first READY=1 (it is systemd's main process until then)
    launcher_announces_ready: bool = False
    logger: Optional[logging.Logger] = None
    #: with daemonize, in the daemon: the launcher as (pid, start time).
    #: systemd takes messages from its main process only (NotifyAccess=main),
    #: and that is the launcher until it has named the daemon (MAINPID=) and
    #: exited; the daemon holds its messages until then
    launcher: Optional[tuple[int, int]] = None
    _held_status: Optional[str] = None
    _failed_errnos: set[int] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def from_environment(cls, environ: Optional[MutableMapping[str, str]] = None,
                         pid: Optional[int] = None) -> Optional["Notifier"]:
        """The notifier the environment asks for, or None without
        NOTIFY_SOCKET.  The variables are removed from ``environ`` (default
        os.environ) whatever they hold.  The watchdog applies when
        WATCHDOG_USEC is a positive integer and WATCHDOG_PID is unset or
        names this process (``pid``, default our own)."""
        environ = os.environ if environ is None else environ
        values = {name: environ.pop(name, None) for name in NOTIFY_VARIABLES}
        if not values["NOTIFY_SOCKET"]:
            return None
        problems: list[str] = []
        try:
            address = socket_address(values["NOTIFY_SOCKET"])
        except ValueError as e:
            # Nothing can be sent; say so once the log exists.
            return cls(address="", setup_problems=[f"systemd notifications are off: {e}"])
        interval = watchdog_interval(values["WATCHDOG_USEC"], values["WATCHDOG_PID"],
                                     os.getpid() if pid is None else pid, problems)
        return cls(address=address, watchdog_interval=interval, setup_problems=problems)

    # -- messages ------------------------------------------------------------------
    def send(self, *assignments: str) -> bool:
        """Sends one datagram of ``KEY=value`` lines; True if it went out.
        A failure is logged once per errno (the service manager may be gone
        or busy; a notification is never worth blocking or dying for)."""
        if not self.address:
            return False
        if self.launcher is not None:
            with self._lock:
                if not self.launcher_gone():
                    self._held_status = next(
                        (a for a in assignments if a.startswith("STATUS=")), self._held_status)
                    return False
                held, self._held_status = self._held_status, None
            if held and not any(a.startswith("STATUS=") for a in assignments):
                assignments = (*assignments, held)
        message = "\n".join(assignments).encode("utf-8", "replace")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message, socket.MSG_DONTWAIT, self.address)
        except OSError as e:
            self._report_failure(e)
            return False
        return True

    def _report_failure(self, error: OSError) -> None:
        with self._lock:
            first = error.errno not in self._failed_errnos
            self._failed_errnos.add(error.errno or 0)
        if first and self.logger is not None:
            self.logger.warning("Sending a notification to systemd at %r failed: %s "
                                "(further failures like this one are not logged)",
                                self.address.replace("\0", "@"), error)

    def wait_for_launcher(self, launcher_pid: int) -> None:
        """In a daemonized start's daemon: hold every message until the
        launcher has exited, and leave the first READY=1 to it."""
        started = process_start_time(launcher_pid)
        self.launcher_announces_ready = True
        if started is not None:
            self.launcher = (launcher_pid, started)

    def launcher_gone(self) -> bool:
        """Whether the launcher has exited (always, outside a daemonized
        start); the first time it has, the held STATUS may go out."""
        if self.launcher is None:
            return True
        pid, started = self.launcher
        if process_start_time(pid) != started:   # gone, a zombie, or its pid reused
            self.launcher = None
            return True
        return False

    def send_held(self) -> None:
        """If the launcher has exited, what was held back goes out now."""
        with self._lock:
            if not self.launcher_gone():
                return
            held, self._held_status = self._held_status, None
        if held:
            self.send(held)

    def ready(self, status: str, main_pid: Optional[int] = None) -> bool:
        if self.launcher_announces_ready:
            self.launcher_announces_ready = False   # the launcher said it
            return self.status(status)
        fields = ["READY=1", f"STATUS={status}"]
        if main_pid is not None:
            fields.append(f"MAINPID={main_pid}")
        return self.send(*fields)

    def reloading(self, status: str = "reloading") -> bool:
        return self.send("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}",
                         f"STATUS={status}")

    def stopping(self, status: str = "stopping") -> bool:
        return self.send("STOPPING=1", f"STATUS={status}")

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def daemon_started(self, daemon_pid: int) -> bool:
        """The launcher's last word: the daemon is the main process now, and
        it is ready (its first workers run)."""
        return self.send(f"MAINPID={daemon_pid}", "READY=1",
                         "STATUS=started; the daemon is the main process now")


def process_start_time(pid: int) -> Optional[int]:
    """pid's start time (clock ticks after boot), which with the pid names
    one process; None if it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rpartition(b")")[2].split()
    except OSError:
        return None
    return None if fields[0] in (b"Z", b"X") else int(fields[19])


def watchdog_interval(usec: Optional[str], for_pid: Optional[str], pid: int,
                      problems: list[str]) -> Optional[float]:
    """The watchdog period in seconds from WATCHDOG_USEC and WATCHDOG_PID,
    or None (no watchdog, or one meant for another process)."""
    if not usec:
        return None
    if for_pid:
        try:
            if int(for_pid) != pid:
                return None  # meant for another process (sd_watchdog_enabled's rule)
        except ValueError:
            problems.append(f"WATCHDOG_PID={for_pid!r} is not a pid: no watchdog")
            return None
    try:
        value = int(usec)
    except ValueError:
        value = 0
    if value <= 0:
        problems.append(f"WATCHDOG_USEC={usec!r} is not a positive integer: no watchdog")
        return None
    return value / 1_000_000


class WatchdogTimer(Timer):
    """Every half watchdog period, ``pet()``.  Served by the loop of the top
    process, so the pets stop when that loop stops coming back (a hook that
    blocks it, a wedged process): that is the point of a watchdog."""

    def __init__(self, interval: float, pet: Callable[[], object], now: float) -> None:
        self.period = interval / 2
        self.pet = pet
        self.due: Optional[float] = now

    def handle_deadline(self, now: float) -> None:
        self.due = now + self.period
        self.pet()


class LauncherWatch(Timer):
    """A watcher: in a daemonized start's daemon, it notices the launcher's
    exit (a pidfd turns readable; without pidfds, a look every 0.1 s), so
    that the messages held back until then go out."""

    POLL_INTERVAL = 0.1

    def __init__(self, notifier: Notifier, now: float) -> None:
        self.notifier = notifier
        self.fd: Optional[int] = None
        self.due: Optional[float] = None
        if notifier.launcher is None:
            return
        try:
            self.fd = os.pidfd_open(notifier.launcher[0])
        except (OSError, AttributeError):   # gone already, or no pidfds here
            self.due = now
        if self.fd is not None and notifier.launcher_gone():
            self.finish()   # the pidfd may name a process that reused the pid

    def finish(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        self.due = None
        self.notifier.send_held()

    def watches(self) -> list[tuple[int, bool, bool]]:
        return [] if self.fd is None else [(self.fd, True, False)]

    def handle_ready(self, fd: int, readable: bool, writable: bool, now: float) -> None:
        self.finish()

    def handle_deadline(self, now: float) -> None:
        if self.notifier.launcher_gone():
            self.finish()
        else:
            self.due = now + self.POLL_INTERVAL
