"""What a process says when it cannot write its log (a full disk, a file
size limit, a destination that went away), without saying it per line.

A full filesystem makes every write fail; one report per lost line once
gave 8946 lines of stderr in 6 s.  :class:`DropReport` turns the stream of
failures into three kinds of message:

- the first failure: what failed and why, once;
- while it lasts: a count of the lines dropped, at most every
  ``interval`` seconds (at the next failure after that: no timer, since a
  process that forks must not run a thread for it);
- the first write that works again: how many lines were lost, over how
  long.

It decides only; the handler writes the messages.  Time is an argument
(monotonic seconds), so the rules are tested with a fake clock.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

#: seconds between two counts of dropped lines
REPORT_INTERVAL = 5.0


def describe_error(error: BaseException) -> str:
    """``No space left on device`` for an OSError, the repr otherwise."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return repr(error)


@dataclass
class Outage:
    """One stretch of failed writes."""
    started: float
    reason: str
    dropped: int = 0
    #: lines dropped since the last report
    unreported: int = 0
    last_report: float = 0.0


class DropReport:
    """Counts the lines one process could not write to ``destination``."""

    def __init__(self, destination: str, interval: float = REPORT_INTERVAL) -> None:
        self.destination = destination
        self.interval = interval
        self.outage: Optional[Outage] = None
        #: lines lost in every outage so far (for tests and dumps)
        self.total_dropped = 0

    @property
    def failing(self) -> bool:
        return self.outage is not None

    def failed(self, now: float, error: BaseException, lines: int) -> Optional[str]:
        """lines could not be written; returns what to say now, if anything."""
        self.total_dropped += lines
        outage = self.outage
        if outage is None:
            reason = describe_error(error)
            self.outage = Outage(started=now, reason=reason, dropped=lines, last_report=now)
            return (f"pyse[{os.getpid()}]: cannot write to the log {self.destination}: {reason}; "
                    f"dropping log lines, with a count every {self.interval:g} s, "
                    f"until writing works again")
        outage.dropped += lines
        outage.unreported += lines
        if now - outage.last_report < self.interval:
            return None
        since = now - outage.last_report
        outage.last_report, outage.unreported, unreported = now, 0, outage.unreported
        return (f"pyse[{os.getpid()}]: still cannot write to the log {self.destination} "
                f"({describe_error(error)}): {unreported} lines dropped in the last "
                f"{since:.1f} s, {outage.dropped} since {now - outage.started:.1f} s ago")

    def recovered(self, now: float) -> Optional[str]:
        """A write worked; returns the all-clear if an outage just ended."""
        outage, self.outage = self.outage, None
        if outage is None:
            return None
        return (f"pyse[{os.getpid()}]: writing to the log {self.destination} works again; "
                f"{outage.dropped} lines were lost over {now - outage.started:.1f} s "
                f"({outage.reason})")

    def lost_note(self, now: float) -> Optional[str]:
        """The text of the record that tells the log itself about the gap,
        written ahead of the first lines that get through (None when there
        is no outage)."""
        outage = self.outage
        if outage is None:
            return None
        return (f"{outage.dropped} log lines of this process were lost over "
                f"{now - outage.started:.1f} s: could not write to {self.destination} "
                f"({outage.reason})")

    def forget_in_child(self) -> None:
        """A forked child counts its own losses (the parent reports its own)."""
        self.outage = None
        self.total_dropped = 0
