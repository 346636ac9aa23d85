"""The C kill escalation against a reference model written from the
specification of ServerEngine's ProcessManager::Monitor#tick.

The model below is transcribed from that pseudo-code, not from
csrc/monitor.c:

    heartbeat timed out:  now - last_heartbeat >= heartbeat_timeout
    graceful timed out:   graceful_start < now - graceful_timeout
    KILL instead of QUIT: immediate_start <= now - immediate_timeout
    next step:            next_kill = now + interval + incr * kill_count

Times are integer nanoseconds on both sides (the configuration's seconds
converted once, by pyse.lowlevel.seconds_to_ns), so the comparisons are
exact and a deadline is exactly the first instant at which it holds.
"Unset" (Ruby's nil) is None here; the fake clock may start at 0, which
Ruby would treat as set, so the model never tests a time for truthiness.
The C side is driven through pyse.lowlevel.Monitor, the same code the loop
runs.
"""
from __future__ import annotations

import signal
from dataclasses import dataclass, fields
from typing import Optional

import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant, precondition,
                                 rule)

from helpers import kill_config
from pyse.lowlevel import KillConfig, Monitor, Promotion, seconds_to_ns

pytestmark = pytest.mark.timeout(300)

TERM, QUIT, KILL = int(signal.SIGTERM), int(signal.SIGQUIT), int(signal.SIGKILL)
SECOND = 1_000_000_000


@dataclass(frozen=True)
class NsConfig:
    """A KillConfig's durations in nanoseconds, as the core receives them."""
    heartbeat_timeout: int
    graceful_interval: int
    graceful_increment: int
    graceful_timeout: int
    immediate_interval: int
    immediate_increment: int
    immediate_timeout: int
    graceful_signal: int
    immediate_signal: int

    @classmethod
    def of(cls, c: KillConfig) -> "NsConfig":
        return cls(**{f.name: getattr(c, f.name) if f.name.endswith("_signal")
                      else seconds_to_ns(getattr(c, f.name)) for f in fields(c)})


# ---- the reference model (SPEC §5) ---------------------------------------------

@dataclass
class ModelMonitor:
    last_heartbeat: int
    watch_heartbeat: bool
    next_kill: Optional[int] = None
    graceful_start: Optional[int] = None
    immediate_start: Optional[int] = None
    kill_count: int = 0
    gone: bool = False

    def graceful_stop(self, now: int) -> None:
        if self.next_kill is None:
            self.next_kill = now
        if self.graceful_start is None:
            self.graceful_start = now

    def immediate_stop(self, now: int) -> None:
        if self.next_kill is None:
            self.next_kill = now
        if self.immediate_start is None:
            self.immediate_start = now

    def heartbeat(self, now: int) -> None:
        self.last_heartbeat = now

    def tick(self, config: KillConfig, now: int) -> tuple[int, int]:
        """(signal to send or 0, why the child was promoted this tick)."""
        c = NsConfig.of(config)
        if self.gone:
            return 0, Promotion.NONE
        promoted = Promotion.NONE
        if self.immediate_start is None:
            if self.watch_heartbeat and now - self.last_heartbeat >= c.heartbeat_timeout:
                promoted = Promotion.HEARTBEAT
            elif (self.graceful_start is not None and c.graceful_timeout >= 0
                  and self.graceful_start < now - c.graceful_timeout):
                promoted = Promotion.GRACEFUL
            if promoted != Promotion.NONE:
                self.kill_count = 0
                self.immediate_start = now
                self.next_kill = now
        if self.next_kill is None or self.next_kill > now:
            return 0, promoted
        if self.immediate_start is not None:
            interval, incr = c.immediate_interval, c.immediate_increment
            if c.immediate_timeout >= 0 and self.immediate_start <= now - c.immediate_timeout:
                sig = KILL
            else:
                sig = c.immediate_signal
        else:
            interval, incr, sig = c.graceful_interval, c.graceful_increment, c.graceful_signal
        self.next_kill = now + interval + incr * self.kill_count
        self.kill_count += 1
        return sig, promoted


# ---- strategies -------------------------------------------------------------------

def seconds(max_value: float = 1000.0):
    """Durations >= 0 in seconds, as a configuration holds them: round
    numbers (where boundaries coincide), arbitrary floats, and tiny ones."""
    return st.one_of(st.sampled_from([0.0, 0.001, 0.1, 0.5, 1.0, 2.0, 10.0, 15.0, 60.0]),
                     st.floats(0.0, max_value, allow_nan=False, allow_infinity=False),
                     st.floats(0.0, 1e-6, allow_nan=False))


def nanoseconds(max_seconds: float = 100.0):
    """Clock steps: whole seconds (where boundaries coincide), single
    nanoseconds, and anything up to max_seconds."""
    return st.one_of(st.sampled_from([0, 1, SECOND // 1000, SECOND, 15 * SECOND]),
                     st.integers(0, 10), st.integers(0, int(max_seconds * SECOND)))


def timeouts():
    return st.one_of(st.just(-1.0), seconds())


kill_configs = st.builds(
    KillConfig,
    heartbeat_timeout=st.one_of(st.sampled_from([0.1, 1.0, 3.0, 180.0]),
                                st.floats(0.0, 1000.0, exclude_min=True, allow_nan=False)),
    graceful_interval=seconds(), graceful_increment=seconds(), graceful_timeout=timeouts(),
    immediate_interval=seconds(), immediate_increment=seconds(),
    immediate_timeout=timeouts())

start_times = st.one_of(st.sampled_from([0, SECOND, 12345678 * SECOND // 1000]),
                        st.integers(0, 10 ** 6 * SECOND))


def monitor_state(m: Monitor) -> tuple:
    return (m.next_kill, m.graceful_start, m.immediate_start, m.kill_count)


def model_state(m: ModelMonitor) -> tuple:
    return (m.next_kill, m.graceful_start, m.immediate_start, m.kill_count)


# ---- the stateful comparison -----------------------------------------------------------

class Escalation(RuleBasedStateMachine):
    """Random stop requests, time advances (0 included, and onto the C
    deadline and the nanoseconds around it), heartbeats and child deaths;
    after each, both sides tick at the same fake time and must agree."""

    @initialize(config=kill_configs, t0=start_times, watch=st.booleans())
    def start(self, config: KillConfig, t0: int, watch: bool) -> None:
        self.config = config
        self.now = t0
        self.c = Monitor(t0, watch_heartbeat=watch)
        self.model = ModelMonitor(last_heartbeat=t0, watch_heartbeat=watch)
        self.sent: list[tuple[int, int]] = []
        self.promotions: list[tuple[int, int]] = []
        self.tick_both()

    def tick_both(self) -> None:
        got = self.c.tick(self.config, self.now)
        want = self.model.tick(self.config, self.now)
        note(f"t={self.now!r}: C {got}, model {want}")
        assert (got[0], int(got[1])) == (want[0], int(want[1])), \
            f"at {self.now!r}: C decided {got}, the model {want}"
        if got[0]:
            self.sent.append((self.now, got[0]))
        if got[1] != Promotion.NONE:
            self.promotions.append((self.now, int(got[1])))

    @rule()
    def graceful_stop(self) -> None:
        self.c.graceful_stop(self.now)
        self.model.graceful_stop(self.now)
        self.tick_both()

    @rule()
    def immediate_stop(self) -> None:
        self.c.immediate_stop(self.now)
        self.model.immediate_stop(self.now)
        self.tick_both()

    @rule()
    def heartbeat(self) -> None:
        self.c.heartbeat(self.now)
        self.model.heartbeat(self.now)
        self.tick_both()

    @rule()
    def child_gone(self) -> None:
        self.c.child_gone()
        self.model.gone = True
        self.tick_both()

    @rule(dt=nanoseconds())
    def advance(self, dt: int) -> None:
        self.now += dt
        self.tick_both()

    @precondition(lambda self: self.c.deadline(self.config) is not None)
    @rule(offset=st.integers(-2, 2))
    def advance_near_deadline(self, offset: int) -> None:
        """To the C deadline, or a few nanoseconds before or after it."""
        self.now = max(self.now, self.c.deadline(self.config) + offset)
        self.tick_both()

    @invariant()
    def same_state(self) -> None:
        if hasattr(self, "c"):
            assert monitor_state(self.c) == model_state(self.model)

    @invariant()
    def kill_only_after_the_immediate_timeout(self) -> None:
        if not hasattr(self, "c"):
            return
        for t, sig in self.sent:
            if sig == KILL:
                assert self.config.immediate_timeout >= 0, "-1 means never"
                assert self.model.immediate_start is not None
                assert self.model.immediate_start <= t - seconds_to_ns(
                    self.config.immediate_timeout)

    @invariant()
    def no_deadline_once_the_child_is_gone(self) -> None:
        """The model has no deadlines: this one is the C side's alone.  A
        gone child must not keep the loop waking up."""
        if hasattr(self, "c") and self.model.gone:
            assert self.c.deadline(self.config) is None

    @invariant()
    def graceful_minus_one_never_promotes(self) -> None:
        if hasattr(self, "c") and self.config.graceful_timeout < 0:
            assert Promotion.GRACEFUL not in [p for _, p in self.promotions]

    @invariant()
    def no_deadline_overdue_after_a_tick(self) -> None:
        """After ticking at now, nothing is due before now."""
        if hasattr(self, "c"):
            d = self.c.deadline(self.config)
            assert d is None or d >= self.now


TestEscalation = Escalation.TestCase
TestEscalation.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)


# ---- the deadline is exact -------------------------------------------------------------

operations = st.lists(st.one_of(
    st.tuples(st.just("graceful"), st.just(0)),
    st.tuples(st.just("immediate"), st.just(0)),
    st.tuples(st.just("heartbeat"), st.just(0)),
    st.tuples(st.just("advance"), nanoseconds())), max_size=12)


def copy_of(m: Monitor) -> Monitor:
    clone = Monitor(0)
    clone._m[0] = m._m[0]
    return clone


def c_fields(m: Monitor) -> tuple:
    s = m._m
    return (s.last_heartbeat, s.next_kill, s.graceful_start, s.immediate_start,
            s.kill_count, s.watch_heartbeat, s.gone)


@settings(max_examples=1500, deadline=None)
@given(config=kill_configs, t0=start_times, watch=st.booleans(), ops=operations,
       before=st.integers(1, 10 ** 12))
def test_deadline_is_exact(config, t0, watch, ops, before):
    """Ticking strictly before Monitor.deadline() does nothing at all; at the
    deadline something happens (a signal or a promotion)."""
    m = Monitor(t0, watch_heartbeat=watch)
    now = t0
    for op, dt in ops:
        now += dt
        if op == "graceful":
            m.graceful_stop(now)
        elif op == "immediate":
            m.immediate_stop(now)
        elif op == "heartbeat":
            m.heartbeat(now)
        m.tick(config, now)

    d = m.deadline(config)
    note(f"now={now!r} deadline={d!r} state={c_fields(m)}")
    if d is None:
        for later in (now, now + SECOND, now + 10 ** 7 * SECOND):
            idle = copy_of(m)
            assert idle.tick(config, later) == (0, Promotion.NONE)
            assert c_fields(idle) == c_fields(m)
        return

    assert d >= now, "a tick at now left something overdue"
    for t in {d - 1, d - before}:
        if now <= t < d:
            idle = copy_of(m)
            assert idle.tick(config, t) == (0, Promotion.NONE), f"acted at {t!r} < {d!r}"
            assert c_fields(idle) == c_fields(m), f"state changed at {t!r} < {d!r}"
    due = copy_of(m)
    assert due.tick(config, d) != (0, Promotion.NONE), f"nothing happened at the deadline {d!r}"


# ---- a few worked examples (readable, and pinned) ------------------------------------

def run_ticks(config: KillConfig, seconds, graceful_at=None, immediate_at=None, watch=False):
    """Ticks at each whole second given; returns (second, signal) sent."""
    m = Monitor(0, watch_heartbeat=watch)
    out = []
    for t in seconds:
        if graceful_at == t:
            m.graceful_stop(t * SECOND)
        if immediate_at == t:
            m.immediate_stop(t * SECOND)
        sig, _ = m.tick(config, t * SECOND)
        if sig:
            out.append((t, sig))
    return out


def test_serverengine_defaults_graceful_schedule():
    """The defaults pyse's configuration table holds are ServerEngine's: TERM
    at 0, 15, 40, 75, ... (15 + 10 * n), QUIT from 600 on, never KILL."""
    sent = run_ticks(kill_config(), range(0, 700), graceful_at=0)
    terms = [t for t, s in sent if s == TERM]
    assert terms[:5] == [0, 15, 40, 75, 120]
    first_quit = next(t for t, s in sent if s == QUIT)
    assert first_quit == 601, "graceful_start < now - 600 is strict"
    assert KILL not in {s for _, s in sent}


def test_immediate_timeout_boundary_is_inclusive():
    cfg = kill_config(immediate_interval=1.0, immediate_increment=0.0, immediate_timeout=3.0)
    sent = run_ticks(cfg, [0, 1, 2, 3, 4], immediate_at=0)
    assert sent == [(0, QUIT), (1, QUIT), (2, QUIT), (3, KILL), (4, KILL)]


def test_heartbeat_timeout_boundary_is_inclusive():
    cfg = kill_config(heartbeat_timeout=2.0, immediate_interval=5.0)
    m = Monitor(0, watch_heartbeat=True)
    assert m.tick(cfg, 2 * SECOND - 1) == (0, Promotion.NONE)
    assert m.deadline(cfg) == 2 * SECOND
    assert m.tick(cfg, 2 * SECOND) == (QUIT, Promotion.HEARTBEAT)
    assert m.immediate_start == 2 * SECOND and m.next_kill == 7 * SECOND and m.kill_count == 1


def test_graceful_timeout_promotes_one_nanosecond_after_it():
    cfg = kill_config(graceful_interval=100.0, graceful_timeout=0.1)
    m = Monitor(0)
    m.graceful_stop(0)
    assert m.tick(cfg, 0) == (TERM, Promotion.NONE)
    assert m.deadline(cfg) == SECOND // 10 + 1
    assert m.tick(cfg, SECOND // 10) == (0, Promotion.NONE), "strictly after the timeout"
    assert m.tick(cfg, SECOND // 10 + 1) == (QUIT, Promotion.GRACEFUL)


@pytest.mark.parametrize("seconds, ns", [(0.0, 0), (0.1, 100_000_000), (1e-9, 1), (15.0, 15 * SECOND),
                                         (-1.0, -1), (-1, -1), (1e300, 10 ** 18)])
def test_seconds_become_nanoseconds_once(seconds, ns):
    """-1 (never) stays -1; a huge timeout is capped far from int64's end."""
    assert seconds_to_ns(seconds) == ns
