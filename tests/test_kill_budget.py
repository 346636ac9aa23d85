"""The kill budget (how long pyse's escalation lets a stop take, what
TimeoutStopSec and terminationGracePeriodSeconds must exceed) against the C
escalation itself, driven with a fake clock."""
from __future__ import annotations

import signal
from typing import Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyse import config, lowlevel, process_manager
from pyse.kill_budget import kill_budget, stop_budget


def killed_after(conf: dict, prefix: str) -> Optional[float]:
    """Seconds from a graceful stop to the KILL, by the C monitor of a
    child that never exits; None if none comes in a day (TERM or QUIT
    forever, with a timeout of -1)."""
    kill = process_manager.kill_config(conf, prefix)
    monitor = lowlevel.Monitor(0, watch_heartbeat=False)
    monitor.graceful_stop(0)
    while True:
        due = monitor.deadline(kill)
        if due is None or due > 86400 * lowlevel.NS_PER_SECOND:
            return None
        signo, _promoted = monitor.tick(kill, due)
        if signo == signal.SIGKILL:
            return due / lowlevel.NS_PER_SECOND


def keys(prefix: str = "worker_", **values: float) -> dict:
    return config.validate({"worker_type": "process",
                            **{prefix + name: value for name, value in values.items()}})


@pytest.mark.parametrize("values, expected", [
    ({}, 1260.0),                                           # 600 + (10+20+...+110)
    ({"graceful_kill_timeout": 60, "immediate_kill_timeout": 10}, 70.0),
    ({"graceful_kill_timeout": 20, "immediate_kill_timeout": 5,
      "immediate_kill_interval": 5}, 25.0),
    ({"immediate_kill_timeout": 0}, 600.0),
    ({"graceful_kill_timeout": 0, "immediate_kill_interval_increment": 0}, 600.0),
    ({"graceful_kill_timeout": -1}, None),
    ({"immediate_kill_timeout": -1}, None),
])
def test_the_budget_is_when_the_c_escalation_sends_kill(values, expected):
    conf = keys(**values)
    assert kill_budget(conf, "worker_") == expected
    simulated = killed_after(conf, "worker_")
    if expected is None:
        assert simulated is None
    else:
        # The promotion to immediate comes 1 ns after the graceful timeout.
        assert simulated == pytest.approx(expected, abs=1e-6)


halves = st.integers(min_value=0, max_value=2400).map(lambda n: n / 2)


@settings(max_examples=200, deadline=None)
@given(graceful=halves, immediate=halves, interval=halves.filter(lambda v: v > 0),
       increment=halves)
def test_the_budget_matches_the_escalation_for_any_timing(graceful, immediate, interval,
                                                          increment):
    conf = keys(graceful_kill_timeout=graceful, immediate_kill_timeout=immediate,
                immediate_kill_interval=interval, immediate_kill_interval_increment=increment)
    assert killed_after(conf, "worker_") == pytest.approx(kill_budget(conf, "worker_"), abs=1e-6)


def test_the_tree_budget():
    base = {"worker_type": "process", "worker_graceful_kill_timeout": 60,
            "worker_immediate_kill_timeout": 10}
    assert stop_budget(config.validate(base)) == 70.0
    assert stop_budget(config.validate(dict(base, worker_type="thread"))) is None
    supervised = dict(base, supervisor=True, server_graceful_kill_timeout=20,
                      server_immediate_kill_timeout=10)
    # The server is killed at 30 s; its orphaned workers get 10 + 1 s more.
    assert stop_budget(config.validate(supervised)) == 41.0
    assert stop_budget(config.validate(dict(supervised, worker_type="thread"))) == 30.0
    # Spawned commands of a killed server only get a TERM: no bound then.
    assert stop_budget(config.validate(dict(supervised, worker_type="spawn"))) is None
    assert stop_budget(config.validate(dict(base, supervisor=True, worker_type="spawn"))) == 70.0
