"""The C core's loop against real processes.

Children are forked from the test process (os.fork; the child drops the
parent's loop at once and always ends in os._exit).  Times are measured with
lowlevel.now(), the loop's own clock.  Deadlines must fire within 10 ms; the
bound used here adds PYSE_TEST_TIMING_SLACK (default 15 ms) for loaded CI
machines, and a deadline must never fire early.
"""
from __future__ import annotations

import os
import resource
import select
import signal
import statistics
import subprocess
import sys
import threading
import time

import pytest

from helpers import (close_quietly, is_running, is_zombie, kill_and_reap, kill_config, open_fds,
                     proc_stat, wait_for, wait_pid_exit)
from pyse import lowlevel
from pyse.lowlevel import EventKind, KillConfig

SLACK = float(os.environ.get("PYSE_TEST_TIMING_SLACK", "0.015"))
ON_TIME = 0.010 + SLACK     # how late a deadline may fire, at most

QUIET = kill_config(heartbeat_timeout=3600.0)  # nothing fires on its own


def sig_caught_mask(pid: str = "self") -> int:
    """SigCgt of /proc/<pid>/status: the signals with a handler installed."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("SigCgt:"):
                return int(line.split()[1], 16)
    raise AssertionError("no SigCgt line")


def bit(signo: int) -> int:
    return 1 << (signo - 1)


class Children:
    """Forks children monitored by one loop, and reaps them all at the end."""

    def __init__(self, loop: lowlevel.Loop) -> None:
        self.loop = loop
        self.pids: list[int] = []

    def fork(self, body, config: KillConfig = QUIET, heartbeat: bool = True,
             close_in_child=(), monitor: bool = True, stamped: bool = False,
             heartbeat_optional: bool = False) -> int:
        """Forks a child running body(heartbeat_write_fd or -1); its return
        value (default 0) is the exit code.  The parent keeps nothing but the
        read end, which it hands to the loop.  The bodies here write plain
        bytes as beats, unless stamped (then they beat through a loop's
        parent heartbeat, as pyse's workers do)."""
        if not self.loop.owns_signals:
            # SIGCHLD at least, or a death is seen only at the next wake-up.
            self.loop.own_signals([])
        r, w = os.pipe() if heartbeat else (-1, -1)
        pid = os.fork()
        if pid == 0:
            code = 70
            try:
                self.loop.abandon_in_child([r, *close_in_child])
                code = body(w) or 0
            finally:
                os._exit(code)
        self.pids.append(pid)
        if heartbeat:
            os.close(w)
        if monitor:
            self.loop.add_child(pid, r, config, stamped=stamped,
                                heartbeat_optional=heartbeat_optional)
        elif heartbeat:
            os.close(r)
        return pid

    def reap_all(self) -> None:
        # Only pids that are still our children: one the loop reaped may
        # already belong to another process.
        me = os.getpid()
        for pid in self.pids:
            st = proc_stat(pid)
            if st is not None and st.ppid == me:
                kill_and_reap(pid, 10)


@pytest.fixture
def loop():
    # Python's wakeup fd is always watched, so pytest-timeout's SIGALRM
    # handler can interrupt a wait that hangs.
    lp = lowlevel.Loop(reap_any=False)
    lp.watch_python_signals()
    yield lp
    lp.close()


@pytest.fixture
def children(loop):
    kids = Children(loop)
    yield kids
    kids.reap_all()


def collect(loop: lowlevel.Loop, done, timeout: float = 5.0) -> list[tuple[float, lowlevel.Event]]:
    """Waits until done(events) is true; returns (time seen, event) pairs.
    WAKEUP events (Python signal handlers ran) are left out."""
    deadline = lowlevel.now() + timeout
    seen: list[tuple[float, lowlevel.Event]] = []
    while not done([e for _, e in seen]):
        batch = loop.wait(deadline)
        t = lowlevel.now()
        for ev in batch:
            if ev.kind == EventKind.TIMER:
                raise AssertionError(f"timed out after {timeout} s; events so far: "
                                     f"{[e for _, e in seen]}")
            if ev.kind != EventKind.WAKEUP:
                seen.append((t, ev))
    return seen


def exited(pids) -> callable:
    want = set(pids)
    return lambda evs: want <= {e.pid for e in evs if e.kind == EventKind.EXITED}


def sleep_forever(_w: int) -> int:
    time.sleep(3600)
    return 0


def ignore(*signals):
    for s in signals:
        signal.signal(s, signal.SIG_IGN)


def stubborn(w: int) -> int:
    """Ignores TERM and QUIT, says so with one heartbeat byte, and sleeps."""
    ignore(signal.SIGQUIT, signal.SIGTERM)
    os.write(w, b"r")
    time.sleep(3600)
    return 0


def without_closed_at_death(timed):
    """Drops the CLOSED of a pipe that closed because its child died: exit
    closes the pipe a moment before the child can be reaped, so it may come
    just before EXITED."""
    exits = {e.pid for _, e in timed if e.kind == EventKind.EXITED}
    out = []
    for i, (t, e) in enumerate(timed):
        later = [x for _, x in timed[i + 1:] if x.pid == e.pid]
        if (e.kind == EventKind.CLOSED and e.pid in exits
                and all(x.kind in (EventKind.EXITED, EventKind.KILL) for x in later)):
            continue
        out.append((t, e))
    return out


# ---- exits, pipes, heartbeats ----------------------------------------------------

@pytest.mark.timeout(20)
def test_killed_and_exiting_children_report_their_wait_status(loop, children):
    go_r, go_w = os.pipe()

    def exit_3_when_told(_w):
        os.read(go_r, 1)
        return 3

    killed = children.fork(sleep_forever)
    termed = children.fork(sleep_forever)
    coded = children.fork(exit_3_when_told)
    os.close(go_r)
    os.kill(killed, signal.SIGKILL)
    os.kill(termed, signal.SIGTERM)
    os.write(go_w, b"x")
    os.close(go_w)

    events = [e for _, e in collect(loop, exited([killed, termed, coded]))]
    status = {e.pid: e.status for e in events if e.kind == EventKind.EXITED}
    assert os.WIFSIGNALED(status[killed]) and os.WTERMSIG(status[killed]) == signal.SIGKILL
    assert os.WIFSIGNALED(status[termed]) and os.WTERMSIG(status[termed]) == signal.SIGTERM
    assert os.WIFEXITED(status[coded]) and os.WEXITSTATUS(status[coded]) == 3
    assert len(loop) == 0, "an exited child leaves the table"
    assert sum(e.kind == EventKind.EXITED for e in events) == 3, "one EXITED per child"


@pytest.mark.timeout(20)
def test_only_the_first_beat_is_an_event_later_bytes_move_the_last_heartbeat(loop, children):
    """A heartbeat is liveness, not news: the first beat says the child is
    up (HEARTBEAT), later ones only move its last heartbeat."""
    beat_r, beat_w = os.pipe()

    def beat_when_told(w):
        while os.read(beat_r, 1):
            os.write(w, b".")
        return 0

    pid = children.fork(beat_when_told, close_in_child=[beat_w])
    os.close(beat_r)
    os.write(beat_w, b"b")
    (t, ev), = collect(loop, lambda evs: len(evs) >= 1)
    assert ev == (EventKind.HEARTBEAT, pid, 0, 0)
    for _ in range(3):
        before = loop.monitor(pid)["last_heartbeat"]
        os.write(beat_w, b"b")
        wait_for(lambda: [e for e in loop.wait(lowlevel.now() + 0.01)
                          if e.kind not in (EventKind.TIMER, EventKind.WAKEUP)] == []
                 and loop.monitor(pid)["last_heartbeat"] > before, 5,
                 what="the beat to move the last heartbeat, with no event")
    os.close(beat_w)
    events = [e for _, e in collect(loop, exited([pid]))]
    assert os.WEXITSTATUS(events[-1].status) == 0
    assert EventKind.HEARTBEAT not in {e.kind for e in events}


def stamped_beats_for(seconds: float, interval: float):
    """A body beating like a pyse worker, through its own loop's parent
    heartbeat, for `seconds`, then silent forever."""
    def body(w):
        ignore(signal.SIGQUIT)
        with lowlevel.Loop() as own:
            own.set_parent_heartbeat(w, interval)
            end = lowlevel.now() + seconds
            while lowlevel.now() < end:
                own.wait(end)
        time.sleep(3600)
        return 0
    return body


@pytest.mark.timeout(20)
def test_stamped_beats_are_read_late_yet_time_out_exactly(loop, children):
    """Stamps pile up unread after the first beat (the loop sleeps through
    them), yet the timeout fires exactly heartbeat_timeout after the last
    stamp, and not while the child beats."""
    config = kill_config(heartbeat_timeout=0.15, immediate_interval=0.05,
                         immediate_increment=0.0, immediate_timeout=0.05)
    started = lowlevel.now()
    pid = children.fork(stamped_beats_for(0.6, 0.02), config, stamped=True)
    timed = collect(loop, lambda evs: any(e.kind == EventKind.HEARTBEAT_TIMEOUT for e in evs))
    last_beat = loop.monitor(pid)["last_heartbeat"]
    kinds = [e.kind for _, e in timed]
    assert kinds[:2] == [EventKind.HEARTBEAT, EventKind.HEARTBEAT_TIMEOUT], \
        "one event for the first beat, none for the 30 others"
    timeout_at = timed[1][0]
    assert last_beat >= started + 0.5, "the last stamp was read from the pipe"
    assert 0 <= timeout_at - (last_beat + 0.15) <= ON_TIME, \
        f"timeout {1000 * (timeout_at - last_beat - 0.15):.1f} ms after its due time"
    collect(loop, exited([pid]))


@pytest.mark.timeout(20)
def test_an_optional_heartbeat_applies_only_after_the_first_beat(loop, children):
    config = kill_config(heartbeat_timeout=0.05, immediate_interval=0.02,
                         immediate_increment=0.0, immediate_timeout=0.0)

    def late_single_beat(w):
        time.sleep(0.3)
        os.write(w, b"x")
        time.sleep(3600)
        return 0

    started = lowlevel.now()
    pid = children.fork(late_single_beat, config, heartbeat_optional=True)
    timed = collect(loop, exited([pid]))
    kinds = [e.kind for _, e in timed]
    assert kinds.index(EventKind.HEARTBEAT) < kinds.index(EventKind.HEARTBEAT_TIMEOUT)
    timeout_at = timed[kinds.index(EventKind.HEARTBEAT_TIMEOUT)][0]
    assert timeout_at - started >= 0.3, "no timeout before the first beat"


@pytest.mark.timeout(20)
def test_closed_heartbeat_pipe_is_closed_event_then_immediate_stop(loop, children):
    """A child that closes its pipe but lives on gets CLOSED, then the
    immediate signal at once, and its death is EXITED."""
    config = kill_config(heartbeat_timeout=3600.0, immediate_signal=int(signal.SIGTERM))
    go_r, go_w = os.pipe()

    def close_and_wait(w):
        os.close(w)
        os.read(go_r, 1)  # never written: SIGTERM ends us
        return 0

    pid = children.fork(close_and_wait, config, close_in_child=[go_w])
    os.close(go_r)
    try:
        timed = collect(loop, exited([pid]))
    finally:
        os.close(go_w)
    kinds = [(e.kind, e.status) for _, e in timed]
    assert kinds[0] == (EventKind.CLOSED, 0)
    assert kinds[1] == (EventKind.KILL, signal.SIGTERM)
    assert timed[1][1].err == 0
    assert kinds[2][0] == EventKind.EXITED and os.WTERMSIG(kinds[2][1]) == signal.SIGTERM
    assert len(kinds) == 3


@pytest.mark.timeout(20)
def test_child_exit_with_pipe_is_exited_with_status(loop, children):
    pid = children.fork(lambda w: 5)
    events = [e for _, e in collect(loop, exited([pid]))]
    ev = [e for e in events if e.kind == EventKind.EXITED][0]
    assert os.WIFEXITED(ev.status) and os.WEXITSTATUS(ev.status) == 5
    # Exit closes the pipe a moment before the child can be reaped; either
    # order is fine, but nothing else may come.
    assert {e.kind for e in events} <= {EventKind.EXITED, EventKind.CLOSED, EventKind.KILL}


@pytest.mark.timeout(20)
def test_silent_child_times_out_on_time_and_is_escalated_to_kill(loop, children):
    """Beats, then stops: HEARTBEAT_TIMEOUT at last beat + timeout, QUIT at
    once and every immediate_interval, KILL once immediate_timeout passed."""
    config = kill_config(heartbeat_timeout=0.2, immediate_interval=0.1,
                        immediate_increment=0.0, immediate_timeout=0.3)

    def beat_then_hang(w):
        ignore(signal.SIGQUIT, signal.SIGTERM)
        for _ in range(5):
            os.write(w, b".")
            time.sleep(0.02)
        time.sleep(3600)  # the pipe stays open: only the timeout can tell
        return 0

    pid = children.fork(beat_then_hang, config)
    last_beat = None
    timed = []
    deadline = lowlevel.now() + 5
    while not exited([pid])([e for _, e, _ in timed]):
        for ev in loop.wait(deadline):
            t = lowlevel.now()
            assert ev.kind != EventKind.TIMER, timed
            if ev.kind == EventKind.HEARTBEAT_TIMEOUT:
                # Beats after the first are no events; the monitor has the last.
                last_beat = loop.monitor(pid)["last_heartbeat"]
            if ev.kind not in (EventKind.WAKEUP, EventKind.HEARTBEAT):
                # When the next step is due, as the loop sees it now.
                next_kill = loop.monitor(pid)["next_kill"] if len(loop) else None
                timed.append((t, ev, next_kill))

    # Death closes the pipe too, a moment before the child can be reaped.
    timed = [x for x in timed if not (x[1].kind == EventKind.CLOSED and x[1].pid in
                                      {e.pid for _, e, _ in timed if e.kind == EventKind.EXITED})]
    kinds = [(ev.kind, ev.status) for _, ev, _ in timed]
    assert kinds == [(EventKind.HEARTBEAT_TIMEOUT, 0),
                     (EventKind.KILL, signal.SIGQUIT),
                     (EventKind.KILL, signal.SIGQUIT),
                     (EventKind.KILL, signal.SIGQUIT),
                     (EventKind.KILL, signal.SIGKILL),
                     (EventKind.EXITED, kinds[-1][1])]
    assert os.WTERMSIG(kinds[-1][1]) == signal.SIGKILL

    timeout_at = timed[0][0]
    assert last_beat is not None
    lateness = timeout_at - (last_beat + 0.2)
    assert 0 <= lateness <= ON_TIME, f"heartbeat timeout {lateness * 1000:.1f} ms late"
    assert timed[1][0] - timeout_at <= ON_TIME, "the first QUIT goes out at once"
    for (_, _, due), (t, ev, _) in zip(timed[1:4], timed[2:5]):
        assert 0 <= t - due <= ON_TIME, f"{ev} {1000 * (t - due):.1f} ms off its step"
    immediate_start = timeout_at
    assert timed[4][0] >= immediate_start + 0.3 - ON_TIME, "KILL only after immediate_timeout"


@pytest.mark.timeout(20)
def test_graceful_stop_escalates_term_then_quit_then_kill(loop, children):
    config = kill_config(heartbeat_timeout=3600.0, graceful_interval=0.05,
                        graceful_increment=0.05, graceful_timeout=0.25,
                        immediate_interval=0.05, immediate_increment=0.0,
                        immediate_timeout=0.1)

    pid = children.fork(stubborn, config)
    collect(loop, lambda evs: len(evs) >= 1)  # its HEARTBEAT: it ignores TERM and QUIT now
    started = lowlevel.now()
    loop.stop_child(pid, immediate=False, now=started)
    timed = without_closed_at_death(collect(loop, exited([pid])))
    kinds = [(e.kind, e.status) for _, e in timed]
    term, quit_, kill = (signal.SIGTERM, signal.SIGQUIT, signal.SIGKILL)
    # TERMs at 0, 0.05, 0.15; promotion past 0.25; QUITs at +0, +0.05; KILL at +0.1.
    assert kinds[:4] == [(EventKind.KILL, term)] * 3 + [(EventKind.GRACEFUL_TIMEOUT, 0)]
    assert kinds[4:7] == [(EventKind.KILL, quit_)] * 2 + [(EventKind.KILL, kill)]
    assert kinds[7][0] == EventKind.EXITED and os.WTERMSIG(kinds[7][1]) == kill
    promoted_at = timed[3][0]
    assert 0 <= promoted_at - (started + 0.25) <= ON_TIME
    assert timed[6][0] >= promoted_at + 0.1 - 1e-9, "KILL only after immediate_timeout"


@pytest.mark.timeout(20)
def test_immediate_timeout_minus_one_never_kills(loop, children):
    config = kill_config(heartbeat_timeout=3600.0, immediate_interval=0.02,
                        immediate_increment=0.0, immediate_timeout=-1.0)

    pid = children.fork(stubborn, config)
    collect(loop, lambda evs: len(evs) >= 1)  # ready
    loop.stop_child(pid, immediate=True)
    timed = collect(loop, lambda evs: len(evs) >= 10)
    assert {(e.kind, e.status) for _, e in timed} == {(EventKind.KILL, signal.SIGQUIT)}


# ---- signals ----------------------------------------------------------------------

@pytest.mark.timeout(20)
def test_signals_to_the_process_are_signal_events_in_order(loop):
    before = sig_caught_mask()
    owned = [signal.SIGUSR1, signal.SIGHUP, signal.SIGWINCH, signal.SIGTERM]
    loop.own_signals(owned)
    caught = sig_caught_mask()
    for s in owned + [signal.SIGCHLD]:
        assert caught & bit(s), f"{s!r} is not caught after own_signals"

    sent = [signal.SIGUSR1, signal.SIGHUP, signal.SIGWINCH, signal.SIGUSR1,
            signal.SIGTERM, signal.SIGHUP]
    for s in sent:
        os.kill(os.getpid(), s)
    timed = collect(loop, lambda evs: len(evs) >= len(sent))
    assert [(e.kind, e.status) for _, e in timed] == [(EventKind.SIGNAL, s) for s in sent]

    other = lowlevel.Loop()
    try:
        with pytest.raises(OSError) as info:
            other.own_signals([signal.SIGUSR2])
        assert "another loop owns them" in str(info.value)
    finally:
        other.close()

    loop.release_signals()
    assert sig_caught_mask() == before, "release restores the dispositions found"


@pytest.mark.timeout(20)
def test_owning_a_bad_signal_fails_and_installs_nothing(loop):
    before = sig_caught_mask()
    with pytest.raises(OSError) as info:
        loop.own_signals([signal.SIGUSR1, signal.SIGKILL])
    assert "not a signal that can be caught" in str(info.value)
    assert str(int(signal.SIGKILL)) in str(info.value), "the message names the signal"
    assert sig_caught_mask() == before
    loop.own_signals([signal.SIGUSR1])  # and the loop is still usable
    os.kill(os.getpid(), signal.SIGUSR1)
    timed = collect(loop, lambda evs: len(evs) >= 1)
    assert timed[0][1] == (EventKind.SIGNAL, 0, signal.SIGUSR1, 0)


@pytest.mark.timeout(20)
def test_python_signal_handler_runs_while_the_loop_waits(loop):
    ran = []
    previous = signal.signal(signal.SIGUSR2, lambda s, f: ran.append(lowlevel.now()))
    sender = threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGUSR2))
    try:
        start = lowlevel.now()
        sender.start()
        events = loop.wait(start + 5)
        returned = lowlevel.now()
    finally:
        sender.join()
        signal.signal(signal.SIGUSR2, previous)
    assert EventKind.WAKEUP in [e.kind for e in events]
    assert ran, "the Python handler ran"
    assert returned - start < 1, "the wait ended at the signal, not at its deadline"


@pytest.mark.timeout(20)
def test_sigalrm_from_setitimer_runs_its_handler_during_a_wait(loop):
    ran = []
    previous = signal.signal(signal.SIGALRM, lambda s, f: ran.append(lowlevel.now()))
    start = lowlevel.now()
    # pytest-timeout also lives on SIGALRM: put its timer back afterwards.
    remaining, _ = signal.setitimer(signal.ITIMER_REAL, 0.05)
    try:
        deadline = start + 2
        while not ran and lowlevel.now() < deadline:
            loop.wait(deadline)
    finally:
        signal.signal(signal.SIGALRM, previous)
        if remaining > 0:
            signal.setitimer(signal.ITIMER_REAL, max(0.001, remaining - (lowlevel.now() - start)))
    assert ran and 0.05 - 0.002 <= ran[0] - start <= 0.05 + ON_TIME


@pytest.mark.timeout(20)
def test_ctrl_c_interrupts_a_wait(loop):
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    sender = threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGINT))
    try:
        start = lowlevel.now()
        sender.start()
        with pytest.raises(KeyboardInterrupt):
            while lowlevel.now() < start + 5:
                loop.wait(start + 5)
    finally:
        sender.join()
        signal.signal(signal.SIGINT, previous)
    assert lowlevel.now() - start < 1


# ---- deadlines --------------------------------------------------------------------

@pytest.mark.timeout(20)
@pytest.mark.parametrize("delay", [0.0005, 0.003, 0.02, 0.1, 0.25])
def test_the_callers_deadline_fires_on_time_and_never_early(loop, delay):
    deadline = lowlevel.now() + delay
    events = loop.wait(deadline)
    t = lowlevel.now()
    assert [e.kind for e in events] == [EventKind.TIMER]
    assert deadline <= t <= deadline + ON_TIME, f"{(t - deadline) * 1000:.2f} ms late"


@pytest.mark.timeout(20)
def test_a_past_deadline_fires_at_once(loop):
    start = lowlevel.now()
    assert [e.kind for e in loop.wait(start - 1)] == [EventKind.TIMER]
    assert lowlevel.now() - start < ON_TIME


@pytest.mark.timeout(20)
def test_lifeline_hangup_is_parent_gone(loop, children):
    """The read end of a pipe whose only writer is 'the parent' (a forked
    stand-in): its SIGKILL is PARENT_GONE within 10 ms, reported once."""
    r, w = os.pipe()
    holder = children.fork(sleep_forever, heartbeat=False, close_in_child=[r], monitor=False)
    os.close(w)
    loop.set_lifeline_fd(r)
    try:
        assert [e.kind for e in loop.wait(lowlevel.now() + 0.05)] == [EventKind.TIMER]
        killed = lowlevel.now()
        os.kill(holder, signal.SIGKILL)
        (t, ev), = collect(loop, lambda evs: len(evs) >= 1)
        assert ev.kind == EventKind.PARENT_GONE
        assert t - killed <= ON_TIME
        assert [e.kind for e in loop.wait(lowlevel.now() + 0.05)] == [EventKind.TIMER]
    finally:
        os.close(r)


@pytest.mark.timeout(20)
def test_idle_loop_sleeps(loop, children):
    loop.own_signals([signal.SIGUSR1, signal.SIGHUP])
    for _ in range(3):
        children.fork(sleep_forever)

    def usage():
        ru = resource.getrusage(resource.RUSAGE_THREAD)
        return ru.ru_utime + ru.ru_stime, ru.ru_nvcsw + ru.ru_nivcsw

    cpu0, switches0 = usage()
    start = lowlevel.now()
    events = loop.wait(start + 1.0)
    cpu1, switches1 = usage()
    assert [e.kind for e in events] == [EventKind.TIMER]
    assert lowlevel.now() - start >= 1.0
    print(f"1 s idle wait: {(cpu1 - cpu0) * 1000:.2f} ms CPU, {switches1 - switches0} switches")
    assert cpu1 - cpu0 < 0.02
    assert switches1 - switches0 < 10, "the wait woke up again and again"


# ---- reaping ----------------------------------------------------------------------

@pytest.mark.timeout(20)
def test_reap_any_false_leaves_other_children_alone(loop, children):
    loop.own_signals([])
    popen = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(7)"])
    try:
        own = children.fork(lambda w: 0)
        wait_for(lambda: is_zombie(popen.pid), 10, what="the Popen child to exit")
        events = [e for _, e in collect(loop, exited([own]))]
        assert popen.pid not in {e.pid for e in events}
        assert [e.kind for e in loop.wait(lowlevel.now() + 0.05)] == [EventKind.TIMER]
        assert is_zombie(popen.pid), "still there for its owner to reap"
    finally:
        assert popen.wait(10) == 7, "Popen got the real status"


@pytest.mark.timeout(20)
def test_reap_any_true_reaps_every_child():
    with lowlevel.Loop(reap_any=True) as loop:
        loop.own_signals([])
        pid = os.fork()
        if pid == 0:
            os._exit(9)
        try:
            timed = collect(loop, exited([pid]))
            assert timed[0][1].kind == EventKind.EXITED
            assert os.WEXITSTATUS(timed[0][1].status) == 9
        finally:
            kill_and_reap(pid)


@pytest.mark.timeout(60)
def test_many_children_many_events_in_batches(loop, children):
    """200 children exit at once: more events than one batch holds."""
    loop.own_signals([])
    go_r, go_w = os.pipe()

    def exit_when_told(_w):
        os.read(go_r, 1)
        return 1

    pids = [children.fork(exit_when_told, close_in_child=[go_w]) for _ in range(200)]
    os.close(go_r)
    assert len(loop) == 200
    os.close(go_w)  # EOF for all of them at once
    events = [e for _, e in collect(loop, exited(pids), timeout=30)]
    statuses = {e.pid: e.status for e in events if e.kind == EventKind.EXITED}
    assert sorted(statuses) == sorted(pids)
    assert all(os.WEXITSTATUS(s) == 1 for s in statuses.values())
    assert len(loop) == 0


# ---- errors -----------------------------------------------------------------------

@pytest.mark.timeout(20)
def test_bad_calls_raise_oserror_naming_the_operation(loop, children):
    pid = children.fork(sleep_forever)
    with pytest.raises(OSError) as info:
        loop.add_child(pid, -1, QUIET)
    assert "duplicate pid" in str(info.value)
    for bad in (0, -5):
        with pytest.raises(OSError):
            loop.add_child(bad, -1, QUIET)
    with pytest.raises(ProcessLookupError) as info:
        loop.stop_child(999999999, immediate=True)
    assert "not monitored" in str(info.value) and "999999999" in str(info.value)
    with pytest.raises(ProcessLookupError):
        loop.set_child_config(999999999, QUIET)
    with pytest.raises(ProcessLookupError):
        loop.monitor(999999999)
    assert len(loop) == 1


# ---- the child side -------------------------------------------------------------------

@pytest.mark.timeout(20)
def test_abandon_in_child_closes_every_loop_fd_and_restores_signals(loop, children, tmp_path):
    fds_before = set(open_fds(os.getpid()))
    caught_before = sig_caught_mask()
    loop.own_signals([signal.SIGUSR1, signal.SIGHUP])
    life_r, life_w = os.pipe()
    loop.set_lifeline_fd(life_r)
    others = [children.fork(sleep_forever, close_in_child=[life_r, life_w]) for _ in range(2)]
    assert len(others) == 2
    report_r, report_w = os.pipe()
    try:
        loop_fds = (set(open_fds(os.getpid())) - fds_before - {life_w, report_r, report_w}) \
            | set(loop._wakeup_pipe)
        assert len(loop_fds) >= 2 + 2 + 2 + 1, loop_fds  # self-pipe, wakeup, beats, lifeline

        def report(w):
            fds = sorted(open_fds(os.getpid()))
            os.write(report_w, (" ".join(map(str, fds)) + f" | {sig_caught_mask()}").encode())
            return 0

        pid = children.fork(report, close_in_child=[life_r, life_w, report_r])
        os.close(report_w)
        report_w = -1
        raw = b""
        while chunk := os.read(report_r, 4096):
            raw += chunk
        fd_text, _, mask_text = raw.decode().partition(" | ")
        child_fds = {int(x) for x in fd_text.split()}
        assert not child_fds & loop_fds, f"fds the loop held, still open in the child: " \
                                         f"{sorted(child_fds & loop_fds)}"
        # What remains is what the test process had before, plus the
        # child's own write end of the report pipe and heartbeat pipe.
        extra = child_fds - fds_before
        assert len(extra) <= 3, f"unexpected fds in the child: {sorted(extra)}"
        assert int(mask_text) == caught_before, "the loop's handlers were removed in the child"
        collect(loop, exited([pid]))
    finally:
        close_quietly(life_r, life_w, report_r, *([report_w] if report_w >= 0 else []))


@pytest.mark.timeout(20)
def test_child_after_fork_without_a_loop_closes_the_given_fds(tmp_path):
    r, w = os.pipe()
    extra_r, extra_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            lowlevel.child_after_fork([r, extra_r, extra_w, 987654])  # a bad fd is fine
            open_now = set(open_fds(os.getpid()))
            code = 0 if not open_now & {r, extra_r, extra_w} else 2
        finally:
            os._exit(code)
    close_quietly(r, w, extra_r, extra_w)
    status = wait_pid_exit(pid, 10)
    assert os.waitstatus_to_exitcode(status) == 0


@pytest.mark.timeout(20)
def test_parent_death_signal_kills_the_grandchild():
    """Child forks a grandchild that sets PR_SET_PDEATHSIG(SIGKILL) and
    reports; killing the child kills the grandchild."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            me = os.getpid()
            gc = os.fork()
            if gc == 0:
                try:
                    gone = lowlevel.set_parent_death_signal(signal.SIGKILL, me)
                    wrong = lowlevel.set_parent_death_signal(signal.SIGKILL, me + 1)
                    os.write(w, f"{os.getpid()} {int(gone)} {int(wrong)}\n".encode())
                    time.sleep(3600)
                finally:
                    os._exit(0)
            time.sleep(3600)
        finally:
            os._exit(0)
    os.close(w)
    line = b""
    while not line.endswith(b"\n"):
        chunk = os.read(r, 100)
        assert chunk, "the grandchild did not report"
        line += chunk
    os.close(r)
    gc, gone, wrong = map(int, line.split())
    assert (gone, wrong) == (0, 1)
    os.kill(pid, signal.SIGKILL)
    wait_pid_exit(pid, 10)
    wait_pid_exit(gc, 5)  # reaps it too if we are a subreaper


# ---- latency ----------------------------------------------------------------------

def measure_kill_to_exited(loop: lowlevel.Loop, kills: int) -> list[float]:
    """fork, SIGKILL, wait for EXITED: seconds from kill to event, per kill."""
    latencies = []
    for _ in range(kills):
        pid = os.fork()
        if pid == 0:
            time.sleep(3600)
            os._exit(0)
        try:
            loop.add_child(pid, -1, QUIET)
            sent = lowlevel.now()
            os.kill(pid, signal.SIGKILL)
            deadline = sent + 5
            got = None
            while got is None:
                for ev in loop.wait(deadline):
                    assert ev.kind != EventKind.TIMER, "no EXITED within 5 s"
                    if ev.kind == EventKind.EXITED and ev.pid == pid:
                        got = lowlevel.now()
                        assert os.WTERMSIG(ev.status) == signal.SIGKILL
            latencies.append(got - sent)
        except BaseException:
            kill_and_reap(pid)
            raise
    return latencies


def report_latencies(latencies: list[float]) -> str:
    ordered = sorted(latencies)
    p95 = ordered[int(0.95 * (len(ordered) - 1))]
    return (f"SIGKILL -> EXITED over {len(ordered)} kills: median "
            f"{statistics.median(ordered) * 1e6:.0f} us, p95 {p95 * 1e6:.0f} us, "
            f"max {ordered[-1] * 1e6:.0f} us")


def measure_kill_to_pidfd(kills: int) -> list[float]:
    """The same without the loop: kill to the kernel's exit notification on
    a pidfd.  The floor set by the child's own teardown."""
    latencies = []
    for _ in range(kills):
        pid = os.fork()
        if pid == 0:
            time.sleep(3600)
            os._exit(0)
        pidfd = os.pidfd_open(pid)
        try:
            sent = lowlevel.now()
            os.kill(pid, signal.SIGKILL)
            assert select.select([pidfd], [], [], 5)[0], "no exit within 5 s"
            latencies.append(lowlevel.now() - sent)
        finally:
            os.close(pidfd)
            kill_and_reap(pid)
    return latencies


@pytest.mark.timeout(120)
def test_kill_to_exited_latency_over_1000_kills(loop):
    loop.own_signals([])
    latencies = measure_kill_to_exited(loop, 1000)
    print("\n" + report_latencies(latencies))
    print("floor without the loop (pidfd readable): "
          + report_latencies(measure_kill_to_pidfd(200)))
    assert len(loop) == 0


@pytest.mark.timeout(20)
def test_orphan_kill_timer_kills_a_wedged_orphan(tmp_path):
    """A worker whose lifeline hangs up and which never runs Python again
    dies by SIGKILL orphan_kill_delay after the hangup."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(w)
            with lowlevel.Loop() as worker_loop:
                worker_loop.set_lifeline_fd(r, orphan_kill_delay=0.1)
                events = worker_loop.wait(lowlevel.now() + 10)
                if [e.kind for e in events] != [EventKind.PARENT_GONE]:
                    os._exit(3)
                time.sleep(3600)  # wedged: only the timer can end this
        finally:
            os._exit(4)
    os.close(r)
    time.sleep(0.05)  # let the child reach its wait (either order works)
    hung_up = lowlevel.now()
    os.close(w)
    status = wait_pid_exit(pid, 10)
    took = lowlevel.now() - hung_up
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status
    assert 0.1 <= took <= 0.1 + ON_TIME + 0.05, f"killed {took:.3f} s after the hangup"


@pytest.mark.timeout(20)
def test_a_signal_is_not_starved_by_children_that_keep_exiting():
    """A crash loop: every time the caller comes back to wait(), a child has
    already exited.  A signal that arrived meanwhile is still reported in
    that same wait, not left in the self-pipe behind the exits."""
    with lowlevel.Loop(reap_any=True) as server_loop:
        server_loop.own_signals([signal.SIGUSR1])
        for round_number in range(5):
            pid = os.fork()
            if pid == 0:
                os._exit(0)
            wait_for(lambda: is_zombie(pid), 5, what=f"child {pid} to exit")
            os.kill(os.getpid(), signal.SIGUSR1)
            events = server_loop.wait(lowlevel.now() + 5)
            assert (EventKind.EXITED, pid) in {(e.kind, e.pid) for e in events}
            assert EventKind.SIGNAL in {e.kind for e in events}, \
                f"round {round_number}: the signal waits behind {events}"


@pytest.mark.timeout(20)
def test_prepared_orphan_timer_is_armed_by_a_signal_handler(tmp_path):
    """The C signal handler arms the prepared timer by itself once the
    parent changed: the grandchild never waits in the loop again (it sleeps
    in Python, as a wedged worker would be stuck), yet dies by SIGKILL the
    prepared delay after the signal.  The same signal while its parent
    lives arms nothing."""
    r, w = os.pipe()
    middle = os.fork()
    if middle == 0:
        try:
            os.close(r)
            parent = os.getpid()
            grandchild = os.fork()
            if grandchild == 0:
                with lowlevel.Loop() as worker_loop:
                    worker_loop.own_signals([signal.SIGUSR1])
                    lowlevel.prepare_orphan_kill(parent, 0.1)
                    os.write(w, f"{os.getpid()}\n".encode())
                    time.sleep(3600)
                os._exit(4)
            time.sleep(3600)
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb", buffering=0) as reader:
        grandchild = int(reader.readline())
    os.kill(grandchild, signal.SIGUSR1)
    # A negative: nothing may happen, so there is no event to wait for; 4x
    # the delay is the window in which an armed timer would have fired.
    time.sleep(0.4)
    assert is_running(grandchild), "the timer was armed while the parent lived"
    os.kill(middle, signal.SIGKILL)
    wait_pid_exit(middle, 10)
    wait_for(lambda: proc_stat(grandchild) is not None and proc_stat(grandchild).ppid != middle,
             5, what="the re-parenting")
    signalled = lowlevel.now()
    os.kill(grandchild, signal.SIGUSR1)
    status = wait_pid_exit(grandchild, 5)
    took = lowlevel.now() - signalled
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status
    assert 0.1 <= took <= 0.1 + ON_TIME + 0.05, f"killed {took:.3f} s after the signal"


@pytest.mark.stress
@pytest.mark.timeout(900)
def test_stress_kills_with_many_children_at_once(loop, children):
    """PYSE_STRESS_KILLS children (default 10000), 50 alive at a time, killed
    with assorted signals or exiting: every one is EXITED exactly once with
    its own status, and none is left."""
    loop.own_signals([])
    total = int(os.environ.get("PYSE_STRESS_KILLS", "10000"))
    sigs = [signal.SIGKILL, signal.SIGTERM, signal.SIGUSR1, None]
    pending: dict[int, object] = {}
    seen: dict[int, int] = {}
    started = 0
    deadline = lowlevel.now() + 600
    while started < total or pending:
        while started < total and len(pending) < 50:
            how = sigs[started % len(sigs)]
            pid = children.fork(lambda w: 4 if how is None else sleep_forever(w),
                                heartbeat=started % 2 == 0)
            if how is not None:
                os.kill(pid, how)
            pending[pid] = how
            started += 1
        for ev in loop.wait(deadline):
            assert ev.kind != EventKind.TIMER, f"{len(pending)} children never reported"
            if ev.kind != EventKind.EXITED:
                continue
            assert ev.pid not in seen, "one EXITED per child"
            seen[ev.pid] = ev.status
            how = pending.pop(ev.pid)
            if how is None:
                assert os.WIFEXITED(ev.status) and os.WEXITSTATUS(ev.status) == 4
            else:
                assert os.WIFSIGNALED(ev.status) and os.WTERMSIG(ev.status) == how
    children.pids = []  # all reaped by the loop
    assert len(seen) == total and len(loop) == 0
    print(f"\n{total} children reaped")
    print(report_latencies(measure_kill_to_exited(loop, min(total, 2000))))
