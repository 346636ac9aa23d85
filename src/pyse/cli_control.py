"""``pyse stop|restart|reload|detach|dump|status``: a running daemon, found
through its pid file.

Whether the pid file names a live daemon is decided by its lock, never by
the pid alone (see :mod:`pyse.pidfile`): a file nobody holds is stale, even
if its pid now belongs to some other process (pid 1, a reused pid), and a
SIGKILLed daemon's zombie does not hold the lock either.

``status`` asks the daemon itself, over the control socket next to its pid
file (see :mod:`pyse.control_socket`), and prints its answer as a table
(:mod:`pyse.status`) or JSON.

``stop --wait`` watches the daemon's whole tree, read from /proc before the
signal is sent.  A process is named by (pid, start time), so a pid the
kernel hands to a new process while we wait is not mistaken for a member of
the tree.
"""
from __future__ import annotations

import argparse
import enum
import json
import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, TextIO

from pyse import control_socket, pidfile, status
from pyse.signals import (DETACH, DUMP, GRACEFUL_RESTART, GRACEFUL_STOP, IMMEDIATE_RESTART,
                          IMMEDIATE_STOP, RELOAD)

#: command -> (graceful signal, immediate signal)
CONTROL_SIGNALS = {
    "stop": (GRACEFUL_STOP, IMMEDIATE_STOP),
    "restart": (GRACEFUL_RESTART, IMMEDIATE_RESTART),
    "reload": (RELOAD, RELOAD),
    "detach": (DETACH, DETACH),
    "dump": (DUMP, DUMP),
}

#: seconds ``stop --wait`` waits for the tree by default
DEFAULT_STOP_TIMEOUT = 60.0
#: seconds ``pyse status`` waits for the control socket's answer
STATUS_TIMEOUT = control_socket.CLIENT_TIMEOUT
#: how often ``stop --wait`` looks at /proc: the processes are not our
#: children, so no SIGCHLD or wait() tells us when they go
WATCH_INTERVAL = 0.05


class ControlError(Exception):
    """The daemon cannot be reached; the message says why."""


# -- the pid file ----------------------------------------------------------------

class DaemonState(enum.Enum):
    """LSB's init-script status codes."""

    RUNNING = 0
    DEAD = 1            # the pid file is left, but no live daemon holds it
    NOT_RUNNING = 3     # no pid file
    UNKNOWN = 4         # the pid file cannot be read


@dataclass(frozen=True)
class PidFileState:
    state: DaemonState
    pid: Optional[int]
    reason: str


def read_pid_file_state(path: str) -> PidFileState:
    try:
        locked = pidfile.is_locked(path)
        pid = pidfile.read_pid(path)
        exists = os.path.lexists(path)
    except OSError as e:
        return PidFileState(DaemonState.UNKNOWN, None,
                            f"pid file {path!r}: cannot read it: {e.strerror}")
    if locked and pid is not None:
        return PidFileState(DaemonState.RUNNING, pid, f"pid {pid} holds the pid file's lock")
    if locked:
        return PidFileState(DaemonState.UNKNOWN, None,
                            f"pid file {path!r} is locked but does not hold a pid")
    if not exists:
        return PidFileState(DaemonState.NOT_RUNNING, None,
                            f"pid file {path!r} does not exist: the daemon is not running")
    named = f"pid {pid} is not a running pyse daemon" if pid is not None else "it holds no pid"
    return PidFileState(DaemonState.DEAD, pid, f"pid file {path!r} is stale: {named} "
                                               f"(nothing holds the file's lock)")


def live_daemon_pid(path: str) -> int:
    found = read_pid_file_state(path)
    if found.state is not DaemonState.RUNNING or found.pid is None:
        raise ControlError(found.reason)
    return found.pid


# -- /proc -------------------------------------------------------------------------

@dataclass(frozen=True)
class ProcessEntry:
    """What /proc/<pid>/stat says about one process."""

    pid: int
    ppid: int
    state: str          # R, S, D, Z (zombie), X (dead), ...
    starttime: int      # clock ticks after boot: with pid, names one process
    comm: str

    @property
    def exited(self) -> bool:
        return self.state in ("Z", "X")


def read_process(pid: int) -> Optional[ProcessEntry]:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return None
    # comm may hold spaces and parentheses: it ends at the last ')'.
    head, _, rest = raw.rpartition(")")
    fields = rest.split()
    return ProcessEntry(pid=pid, ppid=int(fields[1]), state=fields[0],
                        starttime=int(fields[19]), comm=head.partition("(")[2])


def scan_processes() -> Dict[int, ProcessEntry]:
    processes = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            entry = read_process(int(name))
            if entry is not None:
                processes[entry.pid] = entry
    return processes


def tree_of(root: int, processes: Dict[int, ProcessEntry]) -> List[tuple[int, ProcessEntry]]:
    """(depth, process) for root and its descendants, depth first, root first."""
    if root not in processes:
        return []
    children: Dict[int, List[ProcessEntry]] = {}
    for entry in processes.values():
        children.setdefault(entry.ppid, []).append(entry)
    out, todo = [], [(0, processes[root])]
    while todo:
        depth, entry = todo.pop()
        out.append((depth, entry))
        todo.extend((depth + 1, child) for child in
                    sorted(children.get(entry.pid, []), key=lambda e: e.pid, reverse=True))
    return out


def command_line(entry: ProcessEntry) -> str:
    try:
        with open(f"/proc/{entry.pid}/cmdline", "rb") as f:
            raw = f.read()
    except (FileNotFoundError, ProcessLookupError):
        raw = b""
    title = raw.rstrip(b"\0").replace(b"\0", b" ").decode(errors="replace").strip()
    return title or f"[{entry.comm}]" + (" (exited)" if entry.exited else "")


# -- commands ----------------------------------------------------------------------

def send_control_signal(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    pid = live_daemon_pid(args.pid_file)
    graceful, immediate = CONTROL_SIGNALS[args.command]
    signo = immediate if getattr(args, "immediate", False) else graceful
    wait = args.command == "stop" and (args.wait or args.timeout is not None)
    # The tree is read before the signal: once the daemon dies its workers
    # are re-parented, and could no longer be found by their ancestry.
    tree = {entry.pid: entry.starttime
            for _, entry in tree_of(pid, scan_processes())} if wait else {}
    try:
        os.kill(pid, signo)
    except ProcessLookupError:
        raise ControlError(f"pid {pid} from {args.pid_file!r} is not running") from None
    except PermissionError:
        raise ControlError(f"cannot send {signal.Signals(signo).name} to pid {pid} from "
                           f"{args.pid_file!r}: permission denied") from None
    print(f"sent {signal.Signals(signo).name} to {pid}", file=out, flush=True)
    if not wait:
        return 0
    timeout = DEFAULT_STOP_TIMEOUT if args.timeout is None else args.timeout
    return report_stop(pid, tree, timeout, out)


def report_stop(pid: int, tree: Dict[int, int], timeout: float, out: TextIO) -> int:
    started = time.monotonic()
    left = wait_until_gone(tree, None if timeout < 0 else started + timeout)
    elapsed = time.monotonic() - started
    if not left:
        print(f"stopped: pid {pid} and its descendants ({len(tree)} processes) are gone "
              f"after {elapsed:.1f} s", file=out)
        return 0
    shown = ", ".join(f"{e.pid} ({command_line(e)})" for e in left[:10])
    more = f" and {len(left) - 10} more" if len(left) > 10 else ""
    print(f"pyse: {len(left)} of the {len(tree)} processes of pid {pid}'s tree still run "
          f"after {timeout:g} s: {shown}{more}", file=sys.stderr)
    return 1


def wait_until_gone(tree: Dict[int, int], deadline: Optional[float]) -> List[ProcessEntry]:
    """Waits until no process of tree (pid -> start time) runs, or until the
    deadline; returns those still running.  A child a member forks meanwhile
    joins the tree (a worker restarted during the stop)."""
    while True:
        processes = scan_processes()
        alive = {pid: processes[pid] for pid, start in tree.items()
                 if pid in processes and processes[pid].starttime == start
                 and not processes[pid].exited}
        for entry in processes.values():
            if entry.ppid in alive and entry.pid not in tree and not entry.exited:
                tree[entry.pid] = entry.starttime
                alive[entry.pid] = entry
        now = time.monotonic()
        if not alive or (deadline is not None and now >= deadline):
            return sorted(alive.values(), key=lambda e: e.pid)
        time.sleep(WATCH_INTERVAL if deadline is None else min(WATCH_INTERVAL, deadline - now))


def show_status(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """LSB status codes: 0 running, 1 dead with a pid file left, 3 not
    running, 4 unknown."""
    found = read_pid_file_state(args.pid_file)
    as_json = getattr(args, "json", False)
    if found.state is DaemonState.RUNNING and found.pid is not None:
        return show_running_daemon(found.pid, args.pid_file, out, as_json)
    label = STATE_LABELS[found.state]
    if as_json:
        print(json.dumps({"daemon": label, "pid": found.pid, "reason": found.reason}), file=out)
    elif found.state is DaemonState.UNKNOWN:
        print(f"pyse: {found.reason}", file=sys.stderr)
    else:
        print(f"{label}: {found.reason}", file=out)
    return found.state.value


STATE_LABELS = {DaemonState.RUNNING: "running", DaemonState.DEAD: "dead",
                DaemonState.NOT_RUNNING: "not running", DaemonState.UNKNOWN: "unknown"}


def show_running_daemon(pid: int, pid_file: str, out: TextIO, as_json: bool = False) -> int:
    """What ``pyse status`` prints for a live daemon: what its control
    socket says (a table, or JSON), or, if the socket does not answer, its
    process tree from /proc with the reason on stderr.  The daemon runs
    either way (it holds the pid file's lock): exit status 0."""
    path = control_socket.socket_path(pid_file)
    try:
        answer = control_socket.query(path, timeout=STATUS_TIMEOUT)
    except control_socket.ControlSocketError as e:
        print(f"pyse: pid {pid} runs (it holds the pid file's lock), but {e}; its processes "
              f"from /proc follow", file=sys.stderr)
        return show_process_tree(pid, out, as_json, str(e))
    answer = {"daemon": "running", "pid": pid, **answer}
    print(json.dumps(answer, indent=2) if as_json else status.format_table(answer), file=out)
    return DaemonState.RUNNING.value


def show_process_tree(pid: int, out: TextIO, as_json: bool, error: str) -> int:
    """The daemon's tree from /proc, one process a line (pid, command line),
    indented by depth."""
    tree = tree_of(pid, scan_processes())
    if as_json:
        print(json.dumps({"daemon": "running", "pid": pid, "error": error, "processes": [
            {"pid": entry.pid, "ppid": entry.ppid, "depth": depth, "command": command_line(entry)}
            for depth, entry in tree]}, indent=2), file=out)
    else:
        lines = [f"{'  ' * depth}{entry.pid} {command_line(entry)}" for depth, entry in tree]
        print("\n".join(lines) if lines else f"{pid} (exited just now)", file=out)
    return DaemonState.RUNNING.value if tree else DaemonState.NOT_RUNNING.value


def add_control_parsers(sub: "argparse._SubParsersAction[Any]") -> None:
    for name in CONTROL_SIGNALS:
        graceful, immediate = (signal.Signals(s).name for s in CONTROL_SIGNALS[name])
        p = sub.add_parser(name, help=f"send {graceful} ({name}) to a running daemon",
                           description=f"Sends {graceful} to the daemon whose pid file is "
                                       f"given. Exits 0 once sent, 2 if no live daemon holds "
                                       f"the pid file.")
        add_pid_file_option(p)
        if graceful != immediate:
            p.add_argument("--immediate", action="store_true",
                           help=f"send {immediate} (immediate {name}) instead of {graceful}")
        if name == "stop":
            p.add_argument("--wait", action="store_true",
                           help="then wait until the daemon and all its descendants are gone; "
                                "exit 1 if some are still running at the timeout")
            p.add_argument("--timeout", type=timeout_seconds, metavar="S",
                           help=f"seconds --wait waits (implies --wait; default: "
                                f"{DEFAULT_STOP_TIMEOUT:g}; -1: no limit)")
        p.set_defaults(func=send_control_signal)
    status_parser = sub.add_parser(
        "status", help="show whether the daemon runs, and a table of its processes",
        description="Asks the daemon over its control socket (the pid file's path + '.sock') "
                    "and prints the supervisor, the server and each worker: id, pid, state, "
                    "uptime, restarts, heartbeat age, last exit. Exit status (LSB): 0 running, "
                    "1 dead but the pid file is left, 3 not running (no pid file), 4 unknown "
                    "(the pid file cannot be read).")
    add_pid_file_option(status_parser)
    status_parser.add_argument("--json", action="store_true",
                               help="print the same as one JSON object (see docs/cli.md)")
    status_parser.set_defaults(func=show_status)


def add_pid_file_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pid-file", "-p", required=True, metavar="FILE",
                        help="the daemon's pid file (its pid_path)")


def timeout_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (value >= 0 or value == -1) or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected seconds (a number >= 0, or -1 for no "
                                         f"limit), got {text!r}")
    return value
