"""The start delay and the crash-loop backoff, against a model, with a fake clock."""
from __future__ import annotations

from hypothesis import given, strategies as st

from pyse import restart_policy as rp

times = st.floats(0, 1e6, allow_nan=False)
durations = st.floats(0, 1e4, allow_nan=False)


@given(delay=durations, ratio=st.floats(0, 1), r=st.floats(0, 1, exclude_max=True))
def test_start_spacing_matches_serverengine(delay, ratio, r):
    got = rp.start_spacing(delay, ratio, r)
    if delay <= 0:
        assert got == 0
    else:
        assert got == delay + r * delay * ratio - delay * ratio / 2
        # within delay * (1 +- ratio/2)
        assert delay * (1 - ratio / 2) - 1e-9 <= got <= delay * (1 + ratio / 2) + 1e-9


@given(failures=st.integers(0, 10_000), base=durations, maximum=durations)
def test_backoff_grows_doubling_and_is_capped(failures, base, maximum):
    got = rp.backoff_delay(failures, base, maximum)
    if base == 0 or failures == 0:
        assert got == 0
        return
    assert got <= maximum
    expected = base
    for _ in range(min(failures - 1, 64)):
        expected *= 2
    assert got == min(expected, maximum)
    assert rp.backoff_delay(failures + 1, base, maximum) >= got


@given(st.lists(st.tuples(durations, st.booleans()), max_size=50), durations)
def test_failure_count_model(exits, reset):
    """A stop pyse asked for is no failure; a life of `reset` seconds or more
    leaves only this death counted; otherwise deaths add up."""
    failures = 0
    for lived, requested in exits:
        got = rp.failures_after_exit(failures, lived, reset, requested)
        if requested:
            assert got == 0
        elif lived >= reset:
            assert got == 1
        else:
            assert got == failures + 1
        failures = got


@given(last=st.none() | times, died=st.none() | times, failures=st.integers(0, 20),
       r=st.floats(0, 1, exclude_max=True), delay=durations, base=durations)
def test_earliest_start_is_the_later_of_both_rules(last, died, failures, r, delay, base):
    timing = rp.StartTiming(delay=delay, rand_ratio=0.2, backoff_base=base, backoff_max=30.0,
                            backoff_reset=60.0)
    got = rp.earliest_start(timing, last, r, died, failures)
    spacing_due = 0.0 if last is None else last + rp.start_spacing(delay, 0.2, r)
    backoff_due = 0.0 if died is None else died + rp.backoff_delay(failures, base, 30.0)
    assert got == max(spacing_due, backoff_due)
