"""Process titles: what ``ps`` and ``top`` show for each process of the tree.

Without a ``*_process_name`` key each process says what it is:
``pyse: supervisor [app]``, ``pyse: server [app]``, ``pyse: worker 3
[app]``, where app is the worker class's import path
(``myapp.workers:MyWorker``, what ``pyse run`` was given), or
``script.py:MyWorker`` for a class defined in the program's main script.
``daemon_process_name`` (the top process), ``server_process_name`` (the
server under a supervisor) and ``worker_process_name`` (each worker
process) replace them.  Spawned commands keep their own command line.

The title is written where the command line was, and only there: the
environment stays readable in ``/proc/PID/environ`` (setproctitle's
``SPT_NOENV``), so a title longer than the original command line is cut to
its length.
"""
from __future__ import annotations

import os
import sys
from typing import Optional

# Imported at load, while the process may still read its site-packages
# (before chuser).
import setproctitle

_prepared = False


def app_label(worker_class: type) -> str:
    """The worker class's import path: ``module:QualName``.  A class pyse
    mixed into its Worker base (same name, same module) is named by the
    user's class it was made from."""
    cls = worker_class
    first_base = cls.__bases__[0] if cls.__bases__ else None
    if first_base is not None and first_base.__name__ == cls.__name__ and \
            first_base.__module__ == cls.__module__:
        cls = first_base
    module = cls.__module__
    if module == "__main__":
        script = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
        module = script if script and not script.startswith("-") else "__main__"
    return f"{module}:{cls.__qualname__}"


def default_title(role: str, worker_class: type) -> str:
    return f"pyse: {role} [{app_label(worker_class)}]"


def set_title(configured: Optional[str], role: str, worker_class: type) -> None:
    """The configured name if any, else pyse's title for role ("server",
    "worker 3"...)."""
    title = configured or default_title(role, worker_class)
    global _prepared
    if not _prepared:
        # setproctitle decides at its first call whether it may take the
        # environment's memory too: it may not.
        added = "SPT_NOENV" not in os.environ
        if added:
            os.environ["SPT_NOENV"] = "1"
        try:
            setproctitle.setproctitle(title)
        finally:
            if added:
                del os.environ["SPT_NOENV"]
        _prepared = True
        return
    setproctitle.setproctitle(title)
