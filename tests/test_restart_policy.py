"""The start delay, the crash-loop backoff and the restart intensity, with a
fake clock, against models written from their descriptions (not from the
code's own expressions)."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from pyse import restart_policy as rp

durations = st.floats(0, 1e4, allow_nan=False)


# ---- the start delay ------------------------------------------------------------

@given(delay=st.floats(0.001, 1e4), ratio=st.floats(0, 1), r=st.floats(0, 1, exclude_max=True))
def test_start_spacing_is_centred_on_the_delay_and_within_its_band(delay, ratio, r):
    """ServerEngine's delay + random()*delay*rand - delay*rand/2: uniform over
    [delay*(1-rand/2), delay*(1+rand/2)), so draws r and 1-r average to delay,
    and a larger draw never gives a shorter gap."""
    got = rp.start_spacing(delay, ratio, r)
    assert delay * (1 - ratio / 2) * (1 - 1e-12) <= got <= delay * (1 + ratio / 2) * (1 + 1e-12)
    mirror = rp.start_spacing(delay, ratio, 1 - r)
    assert abs((got + mirror) / 2 - delay) <= 1e-9 * delay
    if r < 0.75:
        assert rp.start_spacing(delay, ratio, r + 0.25) >= got


@given(ratio=st.floats(0, 1), r=st.floats(0, 1, exclude_max=True))
def test_no_delay_means_no_spacing(ratio, r):
    assert rp.start_spacing(0.0, ratio, r) == 0.0


# ---- the crash-loop backoff: a model of a slot's life ------------------------------

def model_delays(lives: list[tuple[float, bool]], base: float, maximum: float,
                 reset: float) -> list[float]:
    """The wait before each restart, from the description: after an exit
    pyse asked for, none; after a worker that lived `reset` seconds or more
    died, none (the count starts over at this death); otherwise the n-th
    death in a row of short-lived workers waits 0 for n = 1, then base,
    2*base, 4*base... capped at maximum."""
    out = []
    streak = 0
    for lived, asked in lives:
        if asked:
            streak = 0
            out.append(0.0)
            continue
        streak = 1 if lived >= reset else streak + 1
        if base <= 0 or streak == 1:
            out.append(0.0)
            continue
        wait = base
        for _ in range(streak - 2):
            wait *= 2
            if wait >= maximum:
                break
        out.append(min(wait, maximum))
    return out


lives = st.lists(st.tuples(st.floats(0, 200, allow_nan=False), st.booleans()), max_size=40)


@settings(max_examples=300)
@given(lives, st.floats(0, 10, allow_nan=False), st.floats(0, 100, allow_nan=False),
       st.floats(0, 100, allow_nan=False), st.floats(0, 1e6, allow_nan=False))
def test_slot_history_backoff_matches_the_model(lives, base, maximum, reset, t0):
    timing = rp.StartTiming(delay=0, rand_ratio=0.2, backoff_base=base, backoff_max=maximum,
                            backoff_reset=reset)
    history = rp.SlotHistory()
    now = t0
    got = []
    observed = []   # the lives as the clock saw them (t0 + lived - t0 may round)
    for lived, asked in lives:
        history.record_start(now)
        started, now = now, now + lived
        observed.append((now - started, asked))
        got.append(history.record_exit(timing, now, stop_requested=asked))
    assert got == model_delays(observed, base, maximum, reset)


def test_the_first_restart_is_immediate_then_the_wait_doubles_to_the_cap():
    timing = rp.StartTiming(delay=0, rand_ratio=0.2, backoff_base=1.0, backoff_max=30.0,
                            backoff_reset=60.0)
    history = rp.SlotHistory()
    waits = []
    now = 0.0
    for _ in range(9):
        history.record_start(now)
        now += 0.1
        waits.append(history.record_exit(timing, now, stop_requested=False))
        now += waits[-1]
    assert waits == [0, 1, 2, 4, 8, 16, 30, 30, 30]


@given(st.integers(1, 10_000), st.floats(0.001, 10), st.floats(0.001, 1e4))
def test_backoff_never_overflows_and_is_capped(failures, base, maximum):
    assert 0 <= rp.backoff_delay(failures, base, maximum) <= maximum


def test_earliest_start_waits_for_both_rules():
    timing = rp.StartTiming(delay=2.0, rand_ratio=0.0, backoff_base=5.0, backoff_max=30.0,
                            backoff_reset=60.0)
    # spacing alone: the previous start of any slot at 10 -> 12
    assert rp.earliest_start(timing, 10.0, 0.5, None, 0) == 12.0
    # backoff alone: died at 10 after 2 failures -> 15
    assert rp.earliest_start(timing, None, 0.5, 10.0, 2) == 15.0
    # both: the later one wins
    assert rp.earliest_start(timing, 14.0, 0.5, 10.0, 2) == 16.0
    # nothing: now (0 is never later than now)
    assert rp.earliest_start(timing, None, 0.5, None, 0) == 0.0


# ---- the restart intensity ----------------------------------------------------------

class Intensity(RuleBasedStateMachine):
    """Restarts at increasing fake times against a model that keeps every
    allowed restart and counts those inside the window: at most max_count
    in any window of `window` seconds, and every refused restart would have
    been one too many."""

    @initialize(max_count=st.integers(0, 6), window=st.floats(0.01, 100))
    def start(self, max_count: int, window: float) -> None:
        self.limiter = rp.RestartIntensity(max_count, window)
        self.max_count, self.window = max_count, window
        self.now = 0.0
        self.allowed: list[float] = []

    @rule(dt=st.one_of(st.just(0.0), st.floats(0, 50)))
    def restart(self, dt: float) -> None:
        self.now += dt
        recent = [t for t in self.allowed if t > self.now - self.window]
        want = self.max_count == 0 or len(recent) < self.max_count
        got = self.limiter.allow(self.now)
        assert got == want, (self.now, recent, got)
        if got:
            self.allowed.append(self.now)

    @invariant()
    def never_more_than_max_count_in_a_window(self) -> None:
        if not hasattr(self, "limiter") or self.max_count == 0:
            return
        for t in self.allowed:
            inside = [u for u in self.allowed if t - self.window < u <= t]
            assert len(inside) <= self.max_count


TestIntensity = Intensity.TestCase
TestIntensity.settings = settings(max_examples=200, stateful_step_count=30, deadline=None)


def test_intensity_from_the_configuration_is_off_by_default():
    from pyse import config
    limiter = rp.RestartIntensity.from_config(config.validate({}))
    assert all(limiter.allow(0.0) for _ in range(1000))
