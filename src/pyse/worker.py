"""The worker base class: what ``self.server``, ``self.config``,
``self.logger`` and ``self.worker_id`` are, and the hooks' defaults.

A user's worker "module" is any class with a ``run`` method; :func:`mix_in`
puts it first in the MRO, so its methods override these hooks.
"""
from __future__ import annotations

import logging
from typing import Any, TYPE_CHECKING

# Imported at load, not at the first CONT: after chuser the interpreter's
# own directories may no longer be readable.
from pyse import sigdump

if TYPE_CHECKING:  # pragma: no cover
    from pyse.server import Server


class Worker:
    """Base of every worker.  Hooks (override what you need):

    - ``initialize()``: in the parent, when the worker object is created;
    - ``before_fork()``: in the parent, before each fork (process workers);
    - ``run()``: required; the work;
    - ``stop()``: graceful stop; called from another thread than ``run()``'s;
    - ``reload()``: on USR2;
    - ``after_start()``: in the parent after the worker started;
    - ``dump()``: on CONT (writes a sigdump unless ``disable_sigdump``);
    - ``spawn(process_manager)``: for ``worker_type: "spawn"``.
    """

    def __init__(self, server: "Server", worker_id: int) -> None:
        self.server = server
        self.worker_id = worker_id
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

    def spawn(self, process_manager: Any) -> None:
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


def mix_in(user_class: type | None, base: type, role: str) -> type:
    """A class with user_class first in the MRO and base after it.

    A class that already derives from base is used as it is."""
    if user_class is None:
        return base
    if not isinstance(user_class, type):
        raise TypeError(f"the {role} module must be a class, got {user_class!r}")
    if issubclass(user_class, base):
        return user_class
    return type(user_class.__name__, (user_class, base), {"__module__": user_class.__module__})
