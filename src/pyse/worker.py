"""The worker base class: what ``self.server``, ``self.config``,
``self.logger`` and ``self.worker_id`` are, and the hooks' defaults.

A worker is written either way, and both type-check (``mypy --strict``):

- a subclass of :class:`Worker` (``class MyWorker(pyse.Worker)``), used as
  it is;
- a plain class, a "module" as in ServerEngine: :func:`mix_in` builds a
  class with it first in the MRO and :class:`Worker` after it, so its
  methods override these hooks.  A type checker cannot know that, so such
  a class names :data:`WorkerModule` as its base: :class:`Worker` to the
  type checker, an empty class at run time.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Optional, TypeVar, cast

# Imported at load, not at the first CONT: after chuser the interpreter's
# own directories may no longer be readable.
from pyse import sigdump

if TYPE_CHECKING:  # pragma: no cover
    from pyse.server import Server
    from pyse.spawn_server import CommandLauncher


class Worker:
    """Base of every worker.

    What pyse gives a worker (set before ``initialize()`` runs):

    - ``server`` (:class:`pyse.Server`): the server that runs it;
    - ``worker_id`` (``int``): its slot, 0 to ``workers - 1``;
    - ``logger`` (:class:`logging.Logger`): the server's logger;
    - ``config`` (``dict[str, Any]``, read-only property): the server's
      configuration, the reloaded one after a reload.

    Hooks (override what you need):

    - ``initialize()``: in the parent, when the worker object is created;
    - ``before_fork()``: in the parent, before each fork (process workers);
    - ``run()``: required; the work;
    - ``stop()``: graceful stop; called from another thread than ``run()``'s;
    - ``reload()``: on USR2;
    - ``after_start()``: in the parent after the worker started;
    - ``dump()``: on CONT (writes a sigdump unless ``disable_sigdump``);
    - ``spawn(process_manager)``: for ``worker_type: "spawn"``; it gets a
      :class:`pyse.spawn_server.CommandLauncher`.
    """

    def __init__(self, server: Server, worker_id: int) -> None:
        self.server: Server = server
        self.worker_id: int = worker_id
        self.logger: logging.Logger = server.logger
        self.initialize()

    @property
    def config(self) -> dict[str, Any]:
        return self.server.config

    def initialize(self) -> None:
        pass

    def before_fork(self) -> None:
        pass

    def run(self) -> None:
        raise NotImplementedError("a pyse worker must define run()")

    def spawn(self, process_manager: CommandLauncher) -> None:
        raise NotImplementedError('worker_type "spawn" needs a spawn(process_manager) method')

    def stop(self) -> None:
        pass

    def reload(self) -> None:
        pass

    def after_start(self) -> None:
        pass

    def dump(self) -> None:
        if not self.config["disable_sigdump"]:
            sigdump.dump()


if TYPE_CHECKING:
    #: The base of a plain worker class ("module") for the type checker:
    #: there it is :class:`Worker`, so ``self.logger`` and the rest are known.
    WorkerModule = Worker
else:
    class WorkerModule:
        """The base of a plain worker class ("module"): :class:`Worker` to a
        type checker, this empty class at run time, so that the class stays
        plain and pyse mixes it into :class:`Worker` (ServerEngine's way)::

            class MyWorker(pyse.WorkerModule):
                def run(self) -> None:
                    self.logger.info("worker %d", self.worker_id)
        """


Base = TypeVar("Base")


def mix_in(user_class: Optional[type], base: type[Base], role: str) -> type[Base]:
    """A class with user_class first in the MRO and base after it.

    A class that already derives from base is used as it is."""
    if user_class is None:
        return base
    if not isinstance(user_class, type):
        raise TypeError(f"the {role} module must be a class, got {user_class!r}")
    if issubclass(user_class, base):
        return user_class
    mixed = type(user_class.__name__, (user_class, base), {"__module__": user_class.__module__})
    # type() cannot say that the class it builds derives from base
    return cast("type[Base]", mixed)
