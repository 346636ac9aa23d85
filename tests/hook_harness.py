"""Runs tests/programs/hook_recorder.py (recorder.py's workers under a
server module that records its hooks) for any worker type; the
``run_hooks`` fixture (conftest) starts runs and kills and reaps whatever
is left."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

from recorder_harness import RecorderRun

PROGRAM = Path(__file__).parent / "programs" / "hook_recorder.py"


class HookRun(RecorderRun):
    def __init__(self, tmp_path: Path, config: dict, env: Optional[dict] = None,
                 pass_fds: Iterable[int] = ()) -> None:
        super().__init__(tmp_path, config, env, program=PROGRAM, pass_fds=tuple(pass_fds))

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
