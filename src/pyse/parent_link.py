"""A process's ties to the parent that monitors it.

Two pipes: the heartbeat pipe, whose write end is ours (a byte every
``interval`` tells the parent we are alive and able to take the GIL), and
the lifeline, whose only writer is the parent (its hangup tells us at once
that the parent is gone, however it died).  Workers have one toward their
server; a server has one toward its supervisor.
"""
from __future__ import annotations

import os
from typing import Optional


class ParentLink:
    def __init__(self, parent_pid: int, heartbeat_fd: int, lifeline_fd: int,
                 interval: float) -> None:
        self.parent_pid = parent_pid
        self.heartbeat_fd = heartbeat_fd
        self.lifeline_fd = lifeline_fd
        self.interval = interval
        self.next_beat: float = 0.0
        self.gone_at: Optional[float] = None

    def fds(self) -> list[int]:
        """The fds of this link, which the process's own children must not keep."""
        return [fd for fd in (self.heartbeat_fd, self.lifeline_fd) if fd >= 0]

    def beat_if_due(self, now: float) -> bool:
        """Writes a heartbeat if one is due; returns False if the parent is
        found gone (the write hit a closed pipe)."""
        if now < self.next_beat or self.heartbeat_fd < 0:
            return True
        self.next_beat = now + self.interval
        try:
            os.write(self.heartbeat_fd, b".")
        except BlockingIOError:
            pass  # the parent is behind on reading: a full pipe is proof enough
        except BrokenPipeError:
            os.close(self.heartbeat_fd)
            self.heartbeat_fd = -1
            return False
        return True

    def mark_gone(self, now: float) -> bool:
        """Records the parent's death; True the first time."""
        if self.gone_at is not None:
            return False
        self.gone_at = now
        return True
