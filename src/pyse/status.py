"""What ``pyse status`` shows: the tree's status report, built from a
server's (or supervisor's) own state, and its table.

The report is plain JSON (docs/cli.md describes it): every time in it is a
number of seconds before the report's ``time``, so that a reader needs no
clock of ours.  The builders read the server's state without changing it;
in an in-process server they run on the control thread while the server
thread works, so a report may be a moment out of date, never wrong in
shape.  They know the server types by their attributes (``slots``, a
process manager, the embedded server's single worker), not by import,
since every server type imports this module's caller.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:  # pragma: no cover
    from pyse.multi_worker_server import WorkerSlot

#: the version of the report's shape; a new field does not change it, a
#: changed or removed one does
REPORT_VERSION = 1


@dataclass(frozen=True)
class WorkerCounts:
    """How many of a server's workers are in each state."""

    wanted: int
    running: int = 0
    starting: int = 0      # started, not up yet (a process worker before its first beat)
    stopping: int = 0
    waiting: int = 0       # to be started: a start delay or the crash-loop backoff
    failed: int = 0        # ended with one of unrecoverable_exit_codes

    @property
    def settled(self) -> bool:
        """Every wanted worker runs: nothing starts, stops or waits."""
        return self.starting == 0 and self.stopping == 0 and self.waiting == 0

    def text(self) -> str:
        """systemd's STATUS= line: "4 workers running, 0 starting"..."""
        word = "worker" if self.running == 1 else "workers"
        parts = [f"{self.running} {word} running", f"{self.starting} starting"]
        for name, label in (("stopping", "stopping"), ("waiting", "waiting to start"),
                            ("failed", "failed")):
            if getattr(self, name):
                parts.append(f"{getattr(self, name)} {label}")
        return ", ".join(parts)


# -- the workers of one server ---------------------------------------------------------

def worker_rows(server: Any, now: float) -> list[dict[str, Any]]:
    """One entry per worker slot of server."""
    if hasattr(server, "slots"):
        return [slot_row(server, slot, now) for slot in list(server.slots)]
    if hasattr(server, "current_worker"):     # the embedded server: worker 0, in-process
        return [embedded_row(server, now)]
    return []


def slot_row(server: Any, slot: WorkerSlot, now: float) -> dict[str, Any]:
    state = state_of(server, slot)
    handle = slot.handle
    pid: Optional[int] = handle if isinstance(handle, int) else None
    thread = handle.name if isinstance(handle, threading.Thread) else None
    heartbeat_age = None
    manager = getattr(server, "manager", None)
    if pid is not None and manager is not None:
        child = manager.children.get(pid)
        if child is not None and child.up:
            heartbeat_age = heartbeat_age_of(manager.loop, pid, now)
    elif thread is not None:
        pid = os.getpid()
    history = slot.history
    alive = state in ("running", "starting", "stopping")
    return {
        "id": slot.worker_id, "pid": pid, "thread": thread, "state": state,
        "uptime": age(history.started_at, now) if alive else None,
        "restarts": max(0, history.starts - 1), "failures": history.failures,
        "heartbeat_age": heartbeat_age, "last_exit": exit_entry(history.last_exit, now),
    }


def embedded_state(server: Any) -> str:
    if server.current_worker() is not None:
        return "stopping" if server.stopping else "running"
    return "idle" if server.stopping else "waiting"


def embedded_row(server: Any, now: float) -> dict[str, Any]:
    history = server.history
    state = embedded_state(server)
    return {
        "id": 0, "pid": os.getpid(), "thread": "MainThread", "state": state,
        "uptime": age(history.started_at, now) if state in ("running", "stopping") else None,
        "restarts": max(0, history.starts - 1), "failures": history.failures,
        "heartbeat_age": None, "last_exit": exit_entry(history.last_exit, now),
    }


def heartbeat_age_of(loop: Any, pid: int, now: float) -> Optional[float]:
    """Seconds since pid's latest heartbeat, read fresh from its pipe."""
    if loop is None:
        return None
    try:
        loop.refresh_child(pid, now)
        return age(loop.monitor(pid)["last_heartbeat"], now)
    except OSError:
        return None  # reaped a moment ago; its exit is on the way


def count_workers(server: Any) -> WorkerCounts:
    """The counts of server's workers, without reading any pipe."""
    if hasattr(server, "slots"):
        states = [state_of(server, slot) for slot in list(server.slots)]
        wanted = server.config["workers"]
    elif hasattr(server, "current_worker"):
        states, wanted = [embedded_state(server)], 1
    else:
        states, wanted = [], 0
    return WorkerCounts(wanted=wanted, running=states.count("running"),
                        starting=states.count("starting"), stopping=states.count("stopping"),
                        waiting=states.count("waiting"), failed=states.count("failed"))


def state_of(server: Any, slot: WorkerSlot) -> str:
    """A slot's state as status shows it: a process worker that has not
    beaten yet is starting."""
    state = slot.state.value
    if state == "running" and server.config["worker_type"] == "process":
        child = server.manager.children.get(slot.handle)
        if child is None or not child.up:
            return "starting"
    return state


def age(then: Optional[float], now: float) -> Optional[float]:
    return None if then is None else round(max(0.0, now - then), 3)


def exit_entry(last_exit: Optional[tuple[str, Optional[int], float]],
               now: float) -> Optional[dict[str, Any]]:
    """A last exit, as the report shows it."""
    if last_exit is None:
        return None
    description, code, when = last_exit
    signal_name = description[len("signal "):] if description.startswith("signal ") else None
    return {"description": description, "status": code, "signal": signal_name,
            "ago": age(when, now)}


def server_entry(server: Any, pid: int, state: str, now: float,
                 started_at: Optional[float]) -> dict[str, Any]:
    """The server's own line of the report (the supervisor adds what it
    knows: restarts, heartbeat, last exit)."""
    return {"pid": pid, "state": state, "uptime": age(started_at, now),
            "worker_type": server.config["worker_type"], "workers": server.config["workers"],
            "restarts": None, "heartbeat_age": None, "last_exit": None}


def report(supervisor: Optional[dict[str, Any]], server: Optional[dict[str, Any]], workers: list[dict[str, Any]],
           counts: Optional[WorkerCounts], detached_servers: Optional[list[dict[str, Any]]] = None,
           note: Optional[str] = None) -> dict[str, Any]:
    """The whole report, as the control socket answers it (docs/cli.md)."""
    return {"version": REPORT_VERSION, "time": round(time.time(), 3),
            "supervisor": supervisor, "server": server,
            "detached_servers": detached_servers or [], "workers": workers,
            "counts": asdict(counts) if counts is not None else None, "note": note}


# -- the table ----------------------------------------------------------------------------

COLUMNS = ("ROLE", "ID", "PID", "STATE", "UPTIME", "RESTARTS", "HEARTBEAT", "LAST EXIT")


def duration(seconds: Optional[float]) -> str:
    """0.4s, 12s, 3m05s, 2h03m, 3d04h."""
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def table_row(role: str, entry: dict[str, Any]) -> tuple[str, ...]:
    last = entry.get("last_exit")
    heartbeat = entry.get("heartbeat_age")
    restarts = entry.get("restarts")
    pid = entry.get("pid")
    if entry.get("thread") and entry["thread"] != "MainThread":
        pid_text = f"{pid}/{entry['thread']}"
    else:
        pid_text = "-" if pid is None else str(pid)
    return (role, "-" if entry.get("id") is None else str(entry["id"]), pid_text,
            entry.get("state", "-"), duration(entry.get("uptime")),
            "-" if restarts is None else str(restarts),
            "-" if heartbeat is None else duration(heartbeat) + " ago",
            "-" if last is None else f"{last['description']}, {duration(last['ago'])} ago")


def format_table(answer: dict[str, Any]) -> str:
    """The report as ``pyse status`` prints it: one row per process (and
    per thread worker), then the worker counts."""
    rows: list[tuple[str, ...]] = [COLUMNS]
    if answer.get("supervisor"):
        rows.append(table_row("supervisor", answer["supervisor"]))
    if answer.get("server"):
        rows.append(table_row("server", answer["server"]))
    for detached in answer.get("detached_servers") or ():
        rows.append(table_row("server", dict(detached, state="detached")))
    for worker in answer.get("workers") or ():
        rows.append(table_row("worker", worker))
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
             for row in rows]
    counts = answer.get("counts")
    if counts:
        lines.append(WorkerCounts(**counts).text())
    note = answer.get("note")
    if note:
        lines.append(note)
    return "\n".join(lines)
