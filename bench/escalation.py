"""Kill escalation accuracy: when do TERM, QUIT and KILL reach a worker that
ignores TERM and survives QUIT, compared with their deadlines?

The deadlines come from the escalation both engines implement (pyse's
documented kill escalation, ServerEngine's ProcessManager::Monitor#tick):
each step is due ``interval + increment * n`` after the previous one was
sent, the switch to QUIT is due ``graceful_kill_timeout`` after the first
TERM, and KILL replaces QUIT once ``immediate_kill_timeout`` has passed
since the first QUIT.  Each
deadline is computed from the *observed* previous step, so one late step
is counted once, not again in every step after it.
"""
from __future__ import annotations

import collections
import re
import signal
from dataclasses import dataclass, field

from engines import ESCALATION
from measure import STOP_TIMEOUT, Launch
from watcher import now

LETTER = {"term": "T", "quit": "Q", "gone": "K"}


def kill_timing(cfg: dict) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """((interval, increment, timeout) graceful, (the same) immediate)."""
    return tuple(tuple(cfg[f"worker_{kind}_kill_{part}"]  # type: ignore[return-value]
                       for part in ("interval", "interval_increment", "timeout"))
                 for kind in ("graceful", "immediate"))


def nominal_sequence(cfg: dict = ESCALATION) -> str:
    """The signals a stubborn worker gets when every step is on time.

    >>> nominal_sequence()
    'TTTTQQK'
    """
    (gi, ginc, gt), (ii, iinc, it) = kill_timing(cfg)
    seq, t, n = "T", 0.0, 1
    while t + gi + ginc * (n - 1) <= gt:
        t += gi + ginc * (n - 1)
        seq, n = seq + "T", n + 1
    seq, start, t, n = seq + "Q", gt, gt, 1
    while True:
        t += ii + iinc * (n - 1)
        if start <= t - it:
            return seq + "K"
        seq, n = seq + "Q", n + 1


def step_lateness(arrivals: list[tuple[str, float]], requested: float,
                  cfg: dict = ESCALATION) -> list[tuple[str, float]]:
    """(letter, seconds late; negative: early) for every step but the first
    TERM (whose delay after ``requested``, the moment TERM was sent to the
    server, is reported on its own).  ``arrivals`` are (T|Q|K, time) in time
    order.  As both engines define it, the graceful stop starts when it is
    requested: the first QUIT is due ``graceful_kill_timeout`` after
    ``requested``, however late the first TERM went out.  Each chain is
    followed on its own (a TERM is due after the previous TERM, a QUIT after
    the previous QUIT), so a TERM that a slow in-worker path records just
    after a QUIT is judged fairly, and a late step counts once, not again in
    every step after it.

    >>> def show(arrivals):
    ...     return " ".join(f"{k}{late * 1000:+.0f}" for k, late in step_lateness(arrivals, 0.0))
    >>> show([("T", 0), ("T", .2), ("T", .5), ("T", .9), ("Q", 1.0), ("Q", 1.2), ("K", 1.5)])
    'T+0 T+0 T+0 Q+0 Q+0 K+0'

    One late TERM is late once; the next one is due after it:

    >>> show([("T", 0), ("T", .25), ("T", .55), ("T", .95), ("Q", 1.0), ("Q", 1.2), ("K", 1.5)])
    'T+50 T+0 T+0 Q+0 Q+0 K+0'

    A first TERM 1 s late, then a QUIT on time (recorded before that TERM)
    and a KILL with it, 400 ms early:

    >>> show([("Q", 1.0), ("T", 1.001), ("K", 1.002)])
    'Q+0 K-398'

    A KILL with no QUIT seen is due at graceful + immediate timeout (1.4 s):

    >>> show([("T", 0), ("T", 1.0), ("K", 1.0)])
    'T+800 K-400'
    """
    (gi, ginc, gt), (ii, iinc, it) = kill_timing(cfg)
    first_term = next(i for i, a in enumerate(arrivals) if a[0] == "T")
    prev_term = arrivals[first_term][1]
    first_quit = prev_quit = None
    terms = quits = 0           # steps sent so far in each chain, after its first
    out = []
    for letter, t in arrivals[:first_term] + arrivals[first_term + 1:]:
        if letter == "T":
            due = prev_term + gi + ginc * terms
            terms, prev_term = terms + 1, t
        elif first_quit is None or prev_quit is None:
            # The switch to QUIT is due when the graceful timeout ends; a KILL
            # with no QUIT seen before it is due immediate_kill_timeout later.
            due = requested + gt + (it if letter == "K" else 0.0)
            first_quit = prev_quit = t
        else:
            due = prev_quit + ii + iinc * quits
            if letter == "K":
                due = max(due, first_quit + it)
            quits, prev_quit = quits + 1, t
        out.append((letter, t - due))
    return out


@dataclass
class EscalationResult:
    reactions: list[float] = field(default_factory=list)      # master TERM -> first worker TERM
    lateness: list[float] = field(default_factory=list)       # TERM and QUIT steps
    kill_lateness: list[float] = field(default_factory=list)  # the SIGKILL (death seen by pidfd)
    sequences: list[str] = field(default_factory=list)
    #: how the workers died, from the server's own log ("Worker 0 finished
    #: with signal SIGKILL": pyse keeps ServerEngine's wording), since a
    #: pidfd tells that a worker died, not of what.
    deaths: collections.Counter = field(default_factory=collections.Counter)


DEATH = re.compile(r"Worker \d+ .*finished.* with (signal SIG\w+|status \d+)")


def measure_once(run: Launch, result: EscalationResult) -> None:
    run.wait_ready()
    workers = run.live_workers()
    t0 = now()
    run.proc.send_signal(signal.SIGTERM)
    run.wait_gone([run.proc.pid, *workers], STOP_TIMEOUT, f"{run.engine.title} escalation to end")
    result.deaths.update(m.group(1) for m in DEATH.finditer(run.server_log()))
    for pid in workers:
        arrivals = sorted(((LETTER[e.kind], e.t) for e in run.watcher.events[run.mark:]
                           if e.pid == pid and e.kind in LETTER and e.t >= t0),
                          key=lambda a: a[1])
        result.sequences.append("".join(a[0] for a in arrivals))
        first_term = next((a[1] for a in arrivals if a[0] == "T"), None)
        if first_term is None:
            continue  # never saw a TERM: the sequence in the details shows it
        result.reactions.append(first_term - t0)
        for letter, late in step_lateness(arrivals, t0):
            (result.kill_lateness if letter == "K" else result.lateness).append(late)
