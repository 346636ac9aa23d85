"""What the embedded and thread servers share: their workers run inside the
server process, so the server itself must stay responsive while a worker's
``run()`` may occupy the main thread, even inside a long C call.

Why a control thread, and not Python signal handlers: CPython runs signal
handlers only on the main thread, between bytecodes.  The embedded server's
main thread belongs to the user's ``run()``, which may sit in a C call for
minutes; a TERM must still stop it.  So, as a worker process does, these
servers hand their signals to the C loop (a C handler that only writes a
byte to a self-pipe, whichever thread the kernel picks) and wait in that loop
on a small control thread, without the GIL.  The same wait watches the
supervisor's lifeline (its hangup is seen at once) and times the heartbeats
toward the supervisor.  Signals are not blocked in other threads: a blocked
mask would be inherited by every program the user starts with subprocess.

The control thread only translates what it sees into typed events on a
queue; a "server thread" (the main thread of a thread server, a helper thread of an
embedded server) takes them and runs the server's reactions and hooks, so a
slow user hook never delays a heartbeat or the lifeline.

Neither type can stop a thread immediately: QUIT and HUP act as their
graceful counterparts (TERM, USR1), and the log says so.
"""
from __future__ import annotations

import os
import queue
import threading
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

from pyse import container, lowlevel
from pyse.lowlevel import EventKind
from pyse.process_manager import ParentLink
from pyse.reporter import ServingLoop
from pyse.server import Server
from pyse.signals import SERVER_SIGNALS, dumps_last, replay_held_signals, signal_name
from pyse.socket_manager_tree import BrokerThread, start_broker_thread
from pyse.watching import Watcher, WatcherSet
from pyse.worker import Worker


# -- what the server thread is told ----------------------------------------------------

@dataclass(frozen=True)
class SignalReceived:
    signo: int


@dataclass(frozen=True)
class SupervisorGone:
    at: float                  # CLOCK_MONOTONIC seconds


@dataclass(frozen=True)
class ControlFailed:
    reason: str


@dataclass(frozen=True)
class WorkerThreadExited:
    """A thread server's worker thread ended (posted by the thread itself)."""
    slot: Any
    worker: Worker
    description: str
    exit_code: Optional[int]


@dataclass(frozen=True)
class WatchdogProbe:
    """Time for systemd's watchdog: the server thread pets it when it
    takes this, which proves that it runs."""


ServerEvent = Union[SignalReceived, SupervisorGone, ControlFailed, WorkerThreadExited,
                    WatchdogProbe]


class ControlThread:
    """Waits in the C loop for the server's signals and the supervisor's
    lifeline (the loop also beats toward the supervisor), and posts what it
    sees.  It also serves watchers (see pyse.watching: the control socket,
    the channel to the supervisor, timers), added before start()."""

    def __init__(self, post: Callable[[ServerEvent], None], link: Optional[ParentLink],
                 logger: Any) -> None:
        self._post = post
        self.watchers = WatcherSet(logger)
        self._link = link
        self._closing = False
        self._parent_gone = False
        self._loop: Optional[lowlevel.Loop] = None
        self._wakeup: Optional[tuple[int, int]] = None
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        # Under a supervisor the server process's set-up made the loop: it
        # owns our signals, watches the lifeline and beats to the supervisor.
        given = self._link.loop if self._link is not None else None
        loop = given if given is not None else lowlevel.Loop(reap_any=False)
        try:
            r, w = os.pipe()
            self._wakeup = (r, w)
            os.set_blocking(w, False)   # a wake-up never waits: one byte pending is enough
            loop.wake_on_readable(r)
            if given is None:
                # Last: from here on a TERM is ours, not the default action.
                loop.own_signals(SERVER_SIGNALS)
                replay_held_signals()
        except BaseException:
            loop.close()
            self._close_wakeup()
            raise
        self._loop = loop
        self._thread = threading.Thread(target=self._run, name="pyse-control", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Ends the thread and gives the signals back their old dispositions."""
        if self._thread is not None:
            self._closing = True
            self.wake()
            self._thread.join()
            self._thread = None
        if self._loop is not None:
            # Only now: freeing the loop while the thread waits in it would
            # pull its memory from under the wait.
            self._loop.close()
            self._loop = None
        self._close_wakeup()

    def add_watcher(self, watcher: Watcher) -> None:
        """Before start(), or after close(): the thread's loop is its own."""
        self.watchers.add(watcher)

    def remove_watcher(self, watcher: Watcher) -> None:
        self.watchers.remove(watcher)

    def wake(self) -> None:
        """Makes the thread's wait return, so that it looks at its watchers
        again (one with more to write, the end)."""
        if self._wakeup is not None:
            try:
                os.write(self._wakeup[1], b"x")
            except BlockingIOError:
                pass  # the pipe is full of wake-ups already

    def _close_wakeup(self) -> None:
        if self._wakeup is not None:
            for fd in self._wakeup:
                os.close(fd)
            self._wakeup = None

    def _run(self) -> None:
        assert self._loop is not None
        try:
            while not self._closing:
                self.watchers.sync(self._loop)
                ready = []
                for event in dumps_last(self._loop.wait(self.watchers.earliest(None))):
                    if event.kind is EventKind.SIGNAL:
                        self._post(SignalReceived(event.status))
                    elif event.kind is EventKind.PARENT_GONE and not self._parent_gone:
                        self._parent_gone = True
                        self._post(SupervisorGone(lowlevel.now()))
                    elif event.kind is EventKind.FD_READY:
                        ready.append(event)
                if not self._closing:
                    self.watchers.serve(ready)
        except Exception as e:  # the server must hear of it, or it goes deaf
            self._post(ControlFailed(f"{type(e).__name__}: {e}"))


class InProcessServer(Server):
    """Base of the embedded and thread servers: the control thread, the
    event queue and the reactions to it, and hooks run on fresh threads."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.events: "queue.SimpleQueue[Optional[ServerEvent]]" = queue.SimpleQueue()
        self._control: Optional[ControlThread] = None
        self._broker_thread: Optional[BrokerThread] = None
        super().__init__(*args, **kwargs)

    def post(self, event: Optional[ServerEvent]) -> None:
        """Queues an event for the server thread (None ends serve_events)."""
        self.events.put(event)

    def start_control(self) -> None:
        control = self._control = ControlThread(self.post, self.parent_link, self.logger)
        self.reporter.attach(ServingLoop(control.add_watcher, control.remove_watcher,
                                         wake=control.wake,
                                         post_probe=lambda: self.post(WatchdogProbe())))
        if container.is_init():
            control.add_watcher(container.OrphanReaper(self.logger, lowlevel.now()))
        control.start()
        # Brokers this process owns get a thread of their own, away from
        # the control thread's heartbeats (see pyse.socket_manager_tree).
        self._broker_thread = start_broker_thread(self.logger)

    def stop_control(self) -> None:
        if self._broker_thread is not None:
            self._broker_thread.close()
            self._broker_thread = None
        if self._control is not None:
            self._control.close()
            self._control = None
        self.reporter.close()

    def handle_event(self, event: ServerEvent) -> None:
        """Reacts to one event; runs on the server thread."""
        if isinstance(event, SignalReceived):
            self.logger.debug("Received %s", signal_name(event.signo))
            self.dispatch_signal(event.signo)
        elif isinstance(event, SupervisorGone):
            self.parent_gone(event.at)
        elif isinstance(event, WatchdogProbe):
            self.reporter.watchdog_probe()
        elif isinstance(event, ControlFailed):
            self.logger.error("The control thread failed (%s): stopping, since signals "
                              "can no longer reach this server", event.reason)
            self.stop(True)
        else:
            raise ValueError(f"unknown server event {event!r}")

    def handle_event_logged(self, event: ServerEvent) -> None:
        try:
            self.handle_event(event)
        except Exception:
            # A user hook raised (signals are guarded in dispatch_signal;
            # this is for the rest): the server goes on.
            self.logger.exception("Handling %s raised", type(event).__name__)

    def serve_events(self) -> None:
        """The embedded server's server thread: events until None."""
        while True:
            event = self.events.get()
            if event is None:
                return
            self.handle_event_logged(event)

    # Threads cannot be killed: the immediate variants act gracefully.
    def handle_immediate_stop(self) -> None:
        self.logger.info("QUIT: %s workers have no immediate stop; stopping gracefully",
                         self.config["worker_type"])
        self.stop(True)

    def handle_immediate_restart(self) -> None:
        self.logger.info("HUP: %s workers have no immediate stop; restarting gracefully",
                         self.config["worker_type"])
        self.restart(True)

    # -- hooks on fresh threads -------------------------------------------
    def call_in_thread(self, hook: Callable[[], None], what: str) -> threading.Thread:
        """Runs a worker hook on a new thread, as ServerEngine does: stop()
        must never run on the thread of run(), and a slow hook must not hold
        up the server."""
        def call() -> None:
            try:
                hook()
            except Exception:
                self.logger.exception("%s raised", what)
        name = "pyse-" + what.replace("()", "").replace(" ", "-")   # "pyse-worker-0-stop"
        thread = threading.Thread(target=call, name=name, daemon=True)
        thread.start()
        return thread

    def dump_worker(self, worker: Worker) -> None:
        """CONT: the server's sigdump already holds every thread, so a
        worker's dump() runs only when the user wrote one."""
        if type(worker).dump is not Worker.dump:
            self.call_in_thread(worker.dump, f"worker {worker.worker_id} dump()")
