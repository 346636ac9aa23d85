"""Forks and watches the children of one process: a server's worker
processes (``process`` and ``spawn`` worker types) and a supervisor's server
processes.  ServerEngine calls this its process manager; gunicorn's arbiter
does the same job.

One :class:`ProcessManager` per process owns:

- the C loop (:class:`pyse.lowlevel.Loop`) that reaps children, reads their
  heartbeats, runs their kill escalation and takes this process's signals;
- the lifeline: a pipe whose write end only this process holds and never
  writes, whose read end every child watches, so that its hangup tells each
  child at once that this process died, however it died;
- the kill configuration of each child, and the log lines of what the
  escalation does to it;
- the fork itself, and the one child set-up after it (:func:`setup_child`).

fd ownership.  This process holds, per child, the read end of the child's
heartbeat pipe (owned by the loop), and the lifeline's write end.  A child
holds its heartbeat pipe's write end and the lifeline's read end, and closes
everything else of ours: the other children's pipes, the loop's self-pipe,
the lifeline's write end, and the fds the owner marks private (a pid file's
lock, this process's own link to its parent).  ServerEngine leaves a child
the read end of its own heartbeat pipe, so the child's writes never fail
when the server dies; closing it is half of what makes orphans notice.
"""
from __future__ import annotations

import logging
import os
import signal
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional

from pyse import lowlevel, privilege
from pyse.child_messages import MessageChannels
from pyse.lowlevel import Event, EventKind, KillConfig
from pyse.signals import (IMMEDIATE_RESTART, IMMEDIATE_STOP, SERVER_SIGNALS, replay_held_signals,
                          signal_name)
# Watcher is the protocol add_watcher() takes (see pyse.watching).
from pyse.watching import Watcher, WatcherSet

#: seconds between an orphan's own deadline and the C-armed SIGKILL: the
#: timer is the backstop for a process whose Python cannot run any more
ORPHAN_KILL_GRACE = 1.0

#: signals a child about to exec must get back at their defaults
_DEFAULT_BEFORE_EXEC = (IMMEDIATE_STOP, IMMEDIATE_RESTART, *(
    getattr(signal, name) for name in ("SIGPIPE", "SIGXFZ", "SIGXFSZ") if hasattr(signal, name)))


def kill_config(config: dict[str, Any], prefix: str) -> KillConfig:
    """The escalation timing of the children a validated configuration
    describes: ``<prefix>heartbeat_timeout`` and the ``<prefix>graceful_kill_*``
    and ``<prefix>immediate_kill_*`` keys (prefix "worker_" or "server_")."""
    return KillConfig(
        heartbeat_timeout=config[prefix + "heartbeat_timeout"],
        graceful_interval=config[prefix + "graceful_kill_interval"],
        graceful_increment=config[prefix + "graceful_kill_interval_increment"],
        graceful_timeout=config[prefix + "graceful_kill_timeout"],
        immediate_interval=config[prefix + "immediate_kill_interval"],
        immediate_increment=config[prefix + "immediate_kill_interval_increment"],
        immediate_timeout=config[prefix + "immediate_kill_timeout"],
    )


# -- the child's side ----------------------------------------------------------------

@dataclass(frozen=True)
class ChildRole:
    """What kind of process a child becomes, as far as its set-up goes.

    ``signals``: what the child's own loop takes over (empty for a program
    that execs: it gets default dispositions instead).  ``heartbeat_interval``:
    the loop beats toward us that often (None: the child beats itself, or
    not at all).  ``orphan_kill_delay``: the C timer that SIGKILLs the child
    that long after our death (None: no timer).  ``identity``: the
    configuration and key prefix of a privilege change (``worker_chuser``...).
    ``messages``: a pipe of its own brings it messages from us
    (:mod:`pyse.child_messages`)."""

    signals: tuple[int, ...] = ()
    reap_any: bool = False
    heartbeat_interval: Optional[float] = None
    orphan_kill_delay: Optional[float] = None
    identity: Optional[tuple[dict[str, Any], str]] = None
    death_signal: int = int(signal.SIGTERM)
    messages: bool = False


@dataclass
class ParentLink:
    """A child's ties to the process that forked it, as its set-up left
    them: the heartbeat pipe's write end, the lifeline's read end, and the
    child's own loop (None for a program about to exec), which already owns
    the child's signals, watches the lifeline and writes the heartbeats."""

    parent_pid: int
    heartbeat_fd: int
    lifeline_fd: int
    loop: Optional[lowlevel.Loop] = None
    #: when the parent was found gone (CLOCK_MONOTONIC seconds), or None
    gone_at: Optional[float] = None
    #: the read end of the messages from the parent, or -1
    message_fd: int = -1

    def fds(self) -> list[int]:
        """The link's fds, which the child's own children must not keep."""
        return [fd for fd in (self.heartbeat_fd, self.lifeline_fd, self.message_fd) if fd >= 0]

    def mark_gone(self, now: float) -> bool:
        """Records the parent's death; True the first time."""
        if self.gone_at is not None:
            return False
        self.gone_at = now
        return True


def setup_child(role: ChildRole, parent_pid: int, parent_loop: Optional[lowlevel.Loop],
                close_fds: list[int], heartbeat_fd: int, lifeline_fd: int,
                mask: Iterable[int], message_fd: int = -1) -> ParentLink:
    """The first thing a forked child does, in this order:

    1. drop the parent's loop (its handlers would write into the parent's
       self-pipe) and close every fd the child does not own;
    2. the privilege change, if any: it clears PR_SET_PDEATHSIG, so it goes
       first;
    3. PR_SET_PDEATHSIG, then the orphan kill timer;
    4. the child's own loop takes over its signals and its ties to us;
    5. the immediate signals (QUIT, HUP) get their default action, death,
       whatever the parent inherited (a nohup-style SIG_IGN); a child that
       will exec (no signals of its own) also gets back the defaults of the
       signals Python ignores (SIGPIPE, SIGXFSZ), since SIG_IGN survives
       exec and a program expects the defaults, as subprocess ensures too;
    6. the signal mask the parent had before it blocked signals for the
       fork.  Only now may the child start threads: a thread inherits the
       mask of the thread that starts it, and so does every program the
       child's code runs.  Signals sent meanwhile were held, and now reach
       the handlers of step 4.
    """
    if parent_loop is not None:
        parent_loop.abandon_in_child(close_fds)
    else:
        lowlevel.child_after_fork(close_fds)
    if role.identity is not None:
        privilege.change_from_config(*role.identity)
    link = ParentLink(parent_pid, heartbeat_fd, lifeline_fd, message_fd=message_fd)
    if lowlevel.set_parent_death_signal(role.death_signal, parent_pid):
        link.mark_gone(lowlevel.now())
    if role.orphan_kill_delay is not None:
        lowlevel.prepare_orphan_kill(parent_pid, role.orphan_kill_delay)
    if role.signals:
        loop = link.loop = lowlevel.Loop(reap_any=role.reap_any)
        loop.own_signals(role.signals)
        loop.set_lifeline_fd(lifeline_fd, role.orphan_kill_delay or 0.0)
        if role.heartbeat_interval is not None:
            loop.set_parent_heartbeat(heartbeat_fd, role.heartbeat_interval)
    for signo in (IMMEDIATE_STOP, IMMEDIATE_RESTART) if role.signals else _DEFAULT_BEFORE_EXEC:
        if signo not in role.signals:
            signal.signal(signo, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    return link


# -- the parent's side ----------------------------------------------------------------

@dataclass
class Child:
    """What this process knows of one child it forked."""

    pid: int
    label: str                  # "Worker 3", "Server": how the log names it
    kill_config: KillConfig
    started_at: float
    up: bool = False            # its first heartbeat arrived
    extra: dict[str, Any] = field(default_factory=dict)


class ProcessManager:
    """The children of one process, and the loop that watches them.

    Call :meth:`open` before forking (or :meth:`adopt_loop` in a process
    whose set-up already made its loop), :meth:`wait` for what happened,
    :meth:`close` at the end."""

    def __init__(self, logger: logging.Logger, signals: Iterable[int] = SERVER_SIGNALS) -> None:
        self.logger = logger
        self.signals = tuple(signals)
        self.loop: Optional[lowlevel.Loop] = None
        self.children: dict[int, Child] = {}
        #: fds of this process that no child may inherit (a pid file's
        #: lock, this process's own link to its parent)
        self.private_fds: list[int] = []
        self._lifeline: Optional[tuple[int, int]] = None
        self._owns_loop = False
        self._watcher_set = WatcherSet(logger)
        self.watchers: list[Watcher] = self._watcher_set.watchers
        #: messages to children whose role asked for them
        self.messages = MessageChannels(logger)
        self._watcher_set.add(self.messages)

    # -- the loop ------------------------------------------------------------
    def open(self) -> None:
        """A loop of our own: it reaps every child, takes our signals, and
        wakes for Python's own signal handlers (Ctrl-C in the foreground)."""
        loop = lowlevel.Loop(reap_any=True)
        try:
            loop.own_signals(self.signals)
            loop.watch_python_signals()
        except BaseException:
            loop.close()
            raise
        self._use(loop, owned=True)
        replay_held_signals()

    def adopt_loop(self, loop: lowlevel.Loop) -> None:
        """The loop this process's own set-up made (it already owns our
        signals and our ties to our parent)."""
        loop.watch_python_signals()
        self._use(loop, owned=True)

    def _use(self, loop: lowlevel.Loop, owned: bool) -> None:
        self.loop = loop
        self._owns_loop = owned
        self._lifeline = os.pipe()

    def close(self) -> None:
        self.messages.close()
        if self.loop is not None and self._owns_loop:
            self.loop.close()
        self.loop = None
        if self._lifeline is not None:
            for fd in self._lifeline:
                os.close(fd)
            self._lifeline = None

    # -- forking -------------------------------------------------------------
    def fork(self, label: str, role: ChildRole, child_main: Callable[[ParentLink], int],
             kill_config: KillConfig, *, failure_code: int = 1,
             heartbeat_optional: bool = False, close_in_child: Iterable[int] = (),
             now: Optional[float] = None) -> Child:
        """Forks a child, sets it up (:func:`setup_child`, which also closes
        ``close_in_child``) and runs ``child_main(link)`` in it; the child
        ends in ``os._exit`` with what child_main returned (``failure_code``
        if it raised): it never returns into our stack.  In this process, the
        child joins the loop.

        A child that beats through its own loop (``role.heartbeat_interval``)
        writes stamps; any other is read as plain bytes."""
        assert self.loop is not None and self._lifeline is not None, "open() first"
        heartbeat_r, heartbeat_w = os.pipe()
        lifeline_r, lifeline_w = self._lifeline
        # The fds our watchers serve (a broker's sockets, its clients) are
        # ours alone: a child holding one would keep a client waiting on it;
        # nor may a child keep a sibling's message pipe.
        close_fds = [heartbeat_r, lifeline_w, *self.private_fds, *self.watched_fds(),
                     *self.messages.fds(), *close_in_child]
        message_r, message_w = os.pipe() if role.messages else (-1, -1)
        if message_w >= 0:
            close_fds.append(message_w)
        parent_pid = os.getpid()
        # Block our signals across the fork: until the child has dropped our
        # handlers, a signal sent to it would land in our self-pipe and look
        # like a signal to us.  setup_child unblocks them, in this order.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, self.signals)
        try:
            pid = os.fork()
        except BaseException:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            for fd in (heartbeat_r, heartbeat_w, message_r, message_w):
                if fd >= 0:
                    os.close(fd)
            raise
        if pid == 0:
            code = failure_code
            try:
                try:
                    link = setup_child(role, parent_pid, self.loop, close_fds, heartbeat_w,
                                       lifeline_r, mask, message_r)
                except BaseException:
                    self.logger.exception("%s (pid %d): the set-up after fork failed", label,
                                          os.getpid())
                    raise
                code = child_main(link)
            finally:
                os._exit(code)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.close(heartbeat_w)
        if message_r >= 0:
            os.close(message_r)
            self.messages.add(pid, message_w)
        started = lowlevel.now() if now is None else now
        self.loop.add_child(pid, heartbeat_r, kill_config, started,
                            stamped=role.heartbeat_interval is not None,
                            heartbeat_optional=heartbeat_optional)
        child = self.children[pid] = Child(pid, label, kill_config, started)
        return child

    # -- acting on children (tolerant of one reaped in the current batch) -----
    def stop(self, pid: int, immediate: bool, now: Optional[float] = None) -> None:
        """Starts the graceful or immediate kill escalation of a child."""
        if self.loop is None:
            return
        try:
            self.loop.stop_child(pid, immediate=immediate, now=now)
        except ProcessLookupError:
            # The loop reaped it in the batch being handled; its EXITED event
            # is in that batch too.
            pass

    def send_message(self, pid: int, payload: bytes) -> bool:
        """Queues a message for a child whose role asked for messages;
        False if it has no channel."""
        return self.messages.send(pid, payload)

    def send_signal(self, pid: int, signo: int) -> None:
        try:
            os.kill(pid, signo)
        except ProcessLookupError:
            pass  # it exited; its EXITED event is on the way

    def set_kill_config(self, config: KillConfig) -> None:
        """New escalation timing for every child (a reload)."""
        for child in self.children.values():
            child.kill_config = config
            if self.loop is not None:
                try:
                    self.loop.set_child_config(child.pid, config)
                except ProcessLookupError:
                    pass  # reaped in this batch; its EXITED event follows

    # -- watchers ------------------------------------------------------------
    def add_watcher(self, watcher: Watcher) -> None:
        self._watcher_set.add(watcher)

    def remove_watcher(self, watcher: Watcher) -> None:
        self._watcher_set.remove(watcher, self.loop)

    def watched_fds(self) -> list[int]:
        """The fds our watchers serve (a broker's sockets, its clients, the
        control socket): ours alone, since a child holding one would keep a
        client waiting on it.  Those of now, not of the last wait: a watcher
        may have accepted a client since."""
        self._watcher_set.sync(self.loop)
        return list(self._watcher_set.watched)

    # -- waiting -------------------------------------------------------------
    def wait(self, deadline: Optional[float]) -> list[Event]:
        """What happened, for the owner to act on: SIGNAL, EXITED (the child
        left :attr:`children`), HEARTBEAT (a child is up), PARENT_GONE,
        TIMER, WAKEUP.  What the escalation did is logged here; ready fds
        and deadlines of the watchers are served here."""
        assert self.loop is not None
        self._watcher_set.sync(self.loop)
        out = []
        ready = []
        for event in self.loop.wait(self._watcher_set.earliest(deadline)):
            if event.kind is EventKind.FD_READY:
                ready.append(event)
            elif event.kind is EventKind.EXITED:
                self.children.pop(event.pid, None)
                self.messages.remove(event.pid)
                out.append(event)
            elif event.kind in _CHILD_NEWS:
                child = self.children.get(event.pid)
                if child is not None:
                    self.log_child_event(child, event)
                    if event.kind is EventKind.HEARTBEAT:
                        child.up = True
                        out.append(event)
            else:
                out.append(event)
        if ready or self.watchers:
            self._watcher_set.serve(ready)
        return out

    def log_child_event(self, child: Child, event: Event) -> None:
        what = f"{child.label} (pid {child.pid})"
        kind = event.kind
        if kind is EventKind.HEARTBEAT_TIMEOUT:
            self.logger.warning("%s: no heartbeat for %g s, stopping it immediately", what,
                                child.kill_config.heartbeat_timeout)
        elif kind is EventKind.GRACEFUL_TIMEOUT:
            self.logger.warning("%s: still alive %g s after a graceful stop, stopping it "
                                "immediately", what, child.kill_config.graceful_timeout)
        elif kind is EventKind.KILL and event.err:
            self.logger.debug("%s: sending %s failed: %s", what, signal_name(event.status),
                              os.strerror(event.err))
        elif kind is EventKind.KILL:
            self.logger.debug("%s: sent %s", what, signal_name(event.status))
        elif kind is EventKind.CLOSED:
            self.logger.debug("%s closed its heartbeat pipe", what)
        elif kind is EventKind.HEARTBEAT:
            self.logger.debug("%s is up", what)


_CHILD_NEWS = frozenset({EventKind.HEARTBEAT, EventKind.CLOSED, EventKind.HEARTBEAT_TIMEOUT,
                         EventKind.GRACEFUL_TIMEOUT, EventKind.KILL})
