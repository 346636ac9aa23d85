"""The HTTP load row: requests per second and failed requests through a
load generator (``wrk``; ``ab`` when wrk is missing) against a server of a
few workers, with and without the bench SIGKILLing workers meanwhile.

Every response is the same few bytes (gunicorn_app.py, and pyse_target.py in
its ``http`` mode), one request per connection, as gunicorn's sync workers
serve.  A request fails when its connection is reset or closed before the
response (the worker that held it was killed), times out, or gets a non-2xx
status.
"""
from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from engines import Engine
from measure import Launch
from watcher import BenchError, Watcher, now

HERE = Path(__file__).resolve().parent
CONNECTIONS = 8


@dataclass(frozen=True)
class HttpLoad:
    requests: int
    failed: int
    seconds: float
    kills: int
    tool: str

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_command(tool: str, url: str, seconds: float) -> list[str]:
    if tool == "wrk":
        return ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds:g}s", "--timeout", "2s",
                "-s", str(HERE / "wrk_report.lua"), url]
    # -r: go on after a socket error; -l: the length may vary; -n after -t,
    # or ab stops at its default 50000 requests.
    return ["ab", "-q", "-r", "-l", "-s", "2", "-c", str(CONNECTIONS), "-t", f"{seconds:g}",
            "-n", "100000000", url]


def parse_load(tool: str, output: str, seconds: float, kills: int) -> HttpLoad:
    if tool == "wrk":
        line = next((l for l in output.splitlines() if l.startswith("BENCH ")), None)
        if line is None:
            raise BenchError(f"wrk printed no summary: {output[-300:]}")
        r = json.loads(line[len("BENCH "):])
        failed = r["connect"] + r["read"] + r["write"] + r["status"] + r["timeout"]
        return HttpLoad(r["requests"], failed, r["duration_us"] / 1e6, kills, tool)
    numbers = {k: re.search(rf"{k}:\s+([\d.]+)", output) for k in
               ("Complete requests", "Failed requests", "Non-2xx responses", "Time taken for tests")}
    if numbers["Complete requests"] is None or numbers["Time taken for tests"] is None:
        raise BenchError(f"ab printed no summary: {output[-300:]}")
    value = {k: float(m.group(1)) if m else 0.0 for k, m in numbers.items()}
    return HttpLoad(int(value["Complete requests"]),
                    int(value["Failed requests"] + value["Non-2xx responses"]),
                    value["Time taken for tests"], kills, tool)


def load_tool() -> Optional[str]:
    return next((t for t in ("wrk", "ab") if shutil.which(t)), None)


def http_load(engine: Engine, watcher: Watcher, tmp: Path, workers: int, seconds: float,
              kill_every: Optional[float], tool: str) -> HttpLoad:
    """Starts ``workers`` HTTP workers, loads them for ``seconds``, and
    SIGKILLs one live worker (round robin) every ``kill_every`` seconds."""
    port = free_port()
    with Launch(engine, watcher, tmp, workers, "http", port) as run:
        run.wait_ready()
        out_path = run.dir / f"{tool}.out"
        with open(out_path, "w") as out:
            load = subprocess.Popen(load_command(tool, f"http://127.0.0.1:{port}/", seconds),
                                    stdout=out, stderr=subprocess.STDOUT)
        kills = 0
        end = now() + seconds
        next_kill = now() + (kill_every or seconds)
        while now() < end:
            watcher.drain_until(min(next_kill, end))
            if kill_every and now() >= next_kill:
                live = run.live_workers()
                if live and watcher.kill(live[kills % len(live)], signal.SIGKILL):
                    kills += 1
                next_kill += kill_every
        try:
            load.wait(timeout=seconds + 30)
        except subprocess.TimeoutExpired:
            load.kill()
            load.wait()
            raise BenchError(f"{tool} did not end") from None
        return parse_load(tool, out_path.read_text(errors="replace"), seconds, kills)
