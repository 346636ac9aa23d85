"""Runs tests/programs/hook_recorder.py (recorder.py's workers under a
server module that records its hooks) for any worker type; the
``run_hooks`` fixture starts runs and kills and reaps whatever is left."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Iterable, Optional

import pytest

import helpers
from recorder_harness import RecorderRun, become_subreaper

PROGRAM = Path(__file__).parent / "programs" / "hook_recorder.py"


class HookRun(RecorderRun):
    def __init__(self, tmp_path: Path, config: dict, env: Optional[dict] = None,
                 pass_fds: Iterable[int] = ()) -> None:
        # RecorderRun's start, with this program and fds handed down (a
        # supervisor's heartbeat and lifeline pipes, in the link tests).
        self.config_path = tmp_path / "config.json"
        self.events_path = tmp_path / "events.log"
        self.log_path = tmp_path / "server.log"
        self.write_config(config)
        self.events_path.touch()
        full_env = helpers.marked_env({"PYSE_TEST_EVENTS": str(self.events_path)})
        full_env.update(env or {})
        self.log_file = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, str(PROGRAM), str(self.config_path)],
                                     env=full_env, stdout=self.log_file, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True,
                                     pass_fds=tuple(pass_fds))
        self.pid = self.proc.pid
        self.known_pids: set[int] = set()

    def events(self, worker_id: Optional[int] = None) -> list[str]:
        return [r.event for r in self.records()
                if worker_id is None or r.worker_id == worker_id]

    def live_workers(self) -> set[int]:
        """Worker ids whose run() was recorded more often than its return."""
        counts: dict[int, int] = {}
        for r in self.records():
            if r.event in ("run", "return"):
                counts[r.worker_id] = counts.get(r.worker_id, 0) + (1 if r.event == "run" else -1)
        return {wid for wid, n in counts.items() if n > 0}


@pytest.fixture(scope="module", autouse=True)
def subreaper():
    become_subreaper()


@pytest.fixture
def run_hooks(tmp_path):
    runs: list[HookRun] = []

    def start(config: dict, **kw) -> HookRun:
        run = HookRun(tmp_path, config, **kw)
        runs.append(run)
        return run

    yield start
    for run in runs:
        run.close()
