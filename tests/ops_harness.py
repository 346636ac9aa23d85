"""What the operator-facing tests share: an application to run (APP),
``pyse`` started in the background (start_pyse), and a stand-in for
systemd's notification socket: a datagram socket the test owns (a path, or
a name in the abstract namespace), which records every message with the pid
of its sender (SO_PASSCRED), as systemd sees them.

    write(tmp_path, "app.py", APP)
    with NotifyListener(tmp_path / "notify.sock") as systemd:
        proc = start_pyse(tmp_path, "run", "app:W", env=systemd.env())
        ready = systemd.wait_for(lambda m: m.get("READY") == "1", 15)
"""
from __future__ import annotations

import select
import socket
import struct
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Union

import helpers
from test_cli import pyse_executable

UCRED = struct.Struct("3i")

#: app.py for the tests: W works until stopped (and logs whether it sees
#: systemd's variables), Spawner runs a command, Crashing exits with 3 on
#: its first run, WedgedReload (a server) blocks its loop at USR2 until
#: the test writes a byte to RELOAD_FIFO
APP = '''
import os
import pyse


class W:
    def initialize(self):
        self.flag = pyse.BlockingFlag()

    def run(self):
        seen = [name for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
                if name in os.environ]
        self.logger.info("worker %d sees %s", self.worker_id, seen or "no systemd variable")
        while not self.flag.wait_for_set(1.0):
            pass

    def stop(self):
        self.flag.set()


class Spawner:
    def spawn(self, process_manager):
        process_manager.spawn({}, "sleep", "60")


class Crashing(W):
    """Its first run ends at once with status 3; later runs last."""

    def run(self):
        marker = os.environ["CRASH_MARKER"] + str(self.worker_id)
        if not os.path.exists(marker):
            open(marker, "w").close()
            raise SystemExit(3)
        super().run()


class WedgedReload:
    def reload(self):
        self.logger.info("reload() waits for the FIFO")
        with open(os.environ["RELOAD_FIFO"], "rb") as fifo:
            fifo.read(1)
        super().reload()
'''


@dataclass
class Message:
    """One datagram: its sender and its KEY=value lines."""

    pid: int
    fields: dict[str, str]
    at: float = field(default_factory=time.monotonic)

    def get(self, key: str) -> Optional[str]:
        return self.fields.get(key)

    def __repr__(self) -> str:
        return f"<from {self.pid}: {self.fields}>"


class NotifyListener:
    """The socket; ``address`` is what NOTIFY_SOCKET gets."""

    def __init__(self, where: Union[Path, str, None] = None) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        if where is None:   # the abstract namespace
            name = f"pyse-test-{uuid.uuid4().hex}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            self.sock.bind(str(where))
            self.address = str(where)
        self.messages: list[Message] = []

    def __enter__(self) -> "NotifyListener":
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()
        if not self.address.startswith("@"):
            with_path = Path(self.address)
            if with_path.exists():
                with_path.unlink()

    def env(self, **extra: str) -> dict:
        return {"NOTIFY_SOCKET": self.address, **extra}

    def receive(self, timeout: float) -> Optional[Message]:
        """The next message, or None after timeout seconds."""
        ready, _, _ = select.select([self.sock], [], [], max(0.0, timeout))
        if not ready:
            return None
        data, ancillary, _flags, _addr = self.sock.recvmsg(65536, socket.CMSG_SPACE(UCRED.size))
        pid = -1
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = UCRED.unpack(payload[:UCRED.size])[0]
        fields = dict(line.split("=", 1) for line in data.decode().split("\n") if "=" in line)
        message = Message(pid, fields)
        self.messages.append(message)
        return message

    def wait_for(self, predicate: Callable[[Message], bool], timeout: float,
                 what: str = "a message") -> Message:
        """Receives until a message satisfies predicate; returns it."""
        deadline = time.monotonic() + timeout
        while True:
            message = self.receive(deadline - time.monotonic())
            if message is None:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}; "
                                     f"received {self.messages}")
            if predicate(message):
                return message

    def quiet_for(self, predicate: Callable[[Message], bool], seconds: float) -> list[Message]:
        """Receives for `seconds`; returns the messages that satisfied
        predicate (a test asserts there were none)."""
        deadline = time.monotonic() + seconds
        found = []
        while True:
            message = self.receive(deadline - time.monotonic())
            if message is None:
                return found
            if predicate(message):
                found.append(message)


def start_pyse(directory: Path, *args: str, env: Optional[dict] = None) -> subprocess.Popen:
    """``pyse args...`` in directory, in a new session, output into
    directory/out.log."""
    full_env = helpers.marked_env(env)
    full_env.pop("PYSE_CMD_ARGS", None)
    with open(directory / "out.log", "ab") as out:
        return subprocess.Popen([*pyse_executable(), *map(str, args)], cwd=directory,
                                env=full_env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def is_key(key: str, value: str = "1") -> Callable[[Message], bool]:
    return lambda message: message.get(key) == value


def pids_of_workers(top: int) -> list[int]:
    return [pid for pid in helpers.descendants_of(top) if helpers.is_running(pid)]

