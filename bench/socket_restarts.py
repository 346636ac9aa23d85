"""wrk against examples/http_server.py (4 process workers under a
supervisor, the listener in the socket manager) while the tree restarts,
one kind of event per run:

- ``none``: no event, for comparison;
- ``worker-kill``: a random worker is SIGKILLed every 50 ms;
- ``usr1``: USR1 (graceful restart of the workers) every 100 ms, once the
  workers of the previous one all run;
- ``server-kill``: the server process is SIGKILLed once its successor and
  the successor's workers run (the supervisor waits ``server_restart_wait``,
  1 s, between two starts);
- ``int``: INT (live restart) once the previous one's new server and its
  workers run.

    python bench/socket_restarts.py [--seconds 10] [--events worker-kill,usr1,...]
                                    [--keep-alive]

Each request opens a new connection (``Connection: close``), so that every
one goes through the listener; ``--keep-alive`` measures wrk's default
instead.  Prints one Markdown row per event: the events the load crossed,
requests, requests/s, the 99th percentile of the latency, and wrk's error
counts (connect errors must be 0: no client was refused).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXAMPLE = HERE.parent / "examples" / "http_server.py"
WORKERS = 4
EVENTS = ("none", "worker-kill", "usr1", "server-kill", "int")


def children(pid: int) -> list[int]:
    found: set[int] = set()
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                found.update(int(p) for p in f.read().split())
    except (FileNotFoundError, ProcessLookupError):
        pass
    return sorted(p for p in found if _alive(p))


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


class Tree:
    """The example's supervisor, server(s) and workers."""

    def __init__(self, port: int, log: Path) -> None:
        with open(log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, str(EXAMPLE), str(port), str(WORKERS)],
                                         stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        self.port = port
        self.last = 0   # the server (or the set of workers) the last event hit

    def servers(self) -> list[int]:
        return children(self.proc.pid)

    def workers(self) -> list[int]:
        return [w for s in self.servers() for w in children(s)]

    def settled_server(self) -> int:
        """The server, when it is alone and its workers all run; else 0."""
        servers = self.servers()
        return servers[0] if len(servers) == 1 and len(children(servers[0])) == WORKERS else 0

    def wait_answering(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as conn:
                    conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
                    if conn.recv(100).startswith(b"HTTP/1.1 200") and self.settled_server():
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise SystemExit("the example did not answer within 20 s")

    def cause(self, event: str) -> bool:
        """One event if it is due; True if it happened."""
        if event == "none":
            return False
        if event == "worker-kill":
            try:
                os.kill(random.choice(self.workers()), signal.SIGKILL)
            except (IndexError, ProcessLookupError):
                return False
            return True
        server = self.settled_server()
        workers = hash(tuple(self.workers()))
        mark = workers if event == "usr1" else server
        if not server or mark == self.last:
            return False
        self.last = mark
        if event == "server-kill":
            os.kill(server, signal.SIGKILL)
        else:
            os.kill(self.proc.pid, signal.SIGUSR1 if event == "usr1" else signal.SIGINT)
        return True

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(event: str, seconds: float, keep_alive: bool, log: Path) -> dict:
    tree = Tree(free_port(), log)
    try:
        tree.wait_answering()
        command = ["wrk", "-t2", "-c16", f"-d{seconds:g}s", "--timeout", "5s",
                   "-s", str(HERE / "wrk_report.lua")]
        if not keep_alive:
            command += ["-H", "Connection: close"]
        wrk = subprocess.Popen([*command, f"http://127.0.0.1:{tree.port}/"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        events = 0
        cadence = 0.1 if event == "usr1" else 0.05
        while wrk.poll() is None:
            events += tree.cause(event)
            time.sleep(cadence)  # the cadence of the events, not a wait for one
        output = wrk.stdout.read()
    finally:
        tree.stop()
    line = next((l for l in output.splitlines() if l.startswith("BENCH ")), None)
    if line is None:
        raise SystemExit(f"wrk printed no summary:\n{output}")
    return dict(json.loads(line[len("BENCH "):]), event=event, events=events)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--events", default=",".join(EVENTS),
                        help=f"comma-separated, of {', '.join(EVENTS)}")
    parser.add_argument("--keep-alive", action="store_true")
    parser.add_argument("--log", type=Path, default=Path("socket_restarts.log"))
    args = parser.parse_args()
    events = args.events.split(",")
    if set(events) - set(EVENTS):
        parser.error(f"--events: expected some of {', '.join(EVENTS)}")
    print("| event | events crossed | requests | requests/s | p99 latency | connect errors "
          "| read errors | write errors | timeouts | non-2xx |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for event in events:
        r = measure(event, args.seconds, args.keep_alive, args.log)
        seconds = r["duration_us"] / 1e6
        print(f"| {event} | {r['events']} | {r['requests']} | {r['requests'] / seconds:.0f} "
              f"| {r['p99_us'] / 1000:.1f} ms | {r['connect']} | {r['read']} | {r['write']} | {r['timeout']} "
              f"| {r['status']} |", flush=True)


if __name__ == "__main__":
    main()
