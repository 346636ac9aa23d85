"""Random signals in random order against a running process server: it must
always come back to the configured number of workers, and exit cleanly."""
from __future__ import annotations

import os
import signal
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from recorder_harness import RecorderRun, pid_alive, wait_until, zombie_children

WORKERS = 2
NON_TERMINAL = [signal.SIGUSR1, signal.SIGHUP, signal.SIGUSR2, signal.SIGCONT]


class ServerMachine(RuleBasedStateMachine):
    @initialize(final=st.sampled_from([signal.SIGTERM, signal.SIGQUIT, signal.SIGINT]))
    def start(self, final):
        self.tmp = tempfile.TemporaryDirectory()
        self.final = final
        self.run = RecorderRun(Path(self.tmp.name), {
            "workers": WORKERS, "log_level": "info", "disable_sigdump": True,
            "worker_graceful_kill_timeout": 1, "worker_immediate_kill_timeout": 1})
        self.run.wait_workers(WORKERS)

    @rule(signo=st.sampled_from(NON_TERMINAL))
    def send_signal(self, signo):
        self.run.signal(signo)

    @rule(burst=st.lists(st.sampled_from(NON_TERMINAL), min_size=2, max_size=6))
    def send_burst(self, burst):
        """Signals during a reload or a restart, without waiting in between."""
        for signo in burst:
            self.run.signal(signo)

    @rule(which=st.integers(0, WORKERS - 1))
    def kill_worker(self, which):
        pids = self.run.worker_pids()
        if pids:
            try:
                os.kill(pids[which % len(pids)], signal.SIGKILL)
            except ProcessLookupError:
                pass

    @invariant()
    def comes_back_to_the_worker_count(self):
        if not hasattr(self, "run"):
            return
        def settled():
            # Exactly WORKERS live workers, each of which has started run()
            # and none of which has been asked to stop (a restart in flight).
            pids = self.run.wait_workers(WORKERS, timeout=15)
            stopping = {r.pid for r in self.run.of("stop")}
            return not (set(pids) & stopping)
        wait_until(settled, 15, f"{WORKERS} settled workers")
        assert self.run.proc.poll() is None, "the server is still running"

    def teardown(self):
        if not hasattr(self, "run"):
            return
        try:
            pids = self.run.worker_pids()
            self.run.signal(self.final)
            assert self.run.wait_exit(15) == 0
            assert zombie_children(self.run.pid) == []
            wait_until(lambda: not any(pid_alive(p) for p in pids), 5, "the last workers to go")
        finally:
            self.run.close()
            self.tmp.cleanup()


ServerMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("PYSE_STATEFUL_EXAMPLES", "6")), stateful_step_count=6,
    deadline=None, suppress_health_check=list(HealthCheck))
TestServerMachine = pytest.mark.timeout(300)(ServerMachine.TestCase)
