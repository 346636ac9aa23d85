"""Keys pyse does not know, and what to say about them.

pyse keeps every unknown key, since user code reads its own keys from
``config``.  Two kinds are worth a warning, because pyse silently not using
them is almost certainly not what the user meant:

- another tool's name for a pyse key (:data:`EQUIVALENTS`): someone coming
  from gunicorn writes ``graceful_timeout = 30`` and expects a 30 s stop;
- a near-miss of a pyse key (``worker``, ``log_levle``), from
  :func:`pyse.config.near_misses`.

Only true equivalents are listed: settings that mean what the pyse key
means.  gunicorn's ``bind``, ``accesslog``, ``max_requests``, ``worker_class``
(its values are gunicorn's worker kinds) or ``proc_name`` (a suffix for every
title, where pyse sets whole titles per process) have none, so they are not
warned about.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Mapping, Tuple

from pyse.config import KEYS, near_misses

__all__ = ["Equivalent", "EQUIVALENTS", "unknown_key_warnings", "unknown_keys"]


@dataclass(frozen=True)
class Equivalent:
    #: whose name it is ("gunicorn", "gunicorn and unicorn", ...)
    tools: str
    #: pyse's key (or keys) for the same setting
    keys: Tuple[str, ...]
    #: what differs, if anything
    hint: str = ""


EQUIVALENTS: Mapping[str, Equivalent] = {
    # gunicorn
    "graceful_timeout": Equivalent("gunicorn", ("worker_graceful_kill_timeout",),
                                   "pyse then sends QUIT, and KILL after worker_immediate_kill_timeout"),
    "timeout": Equivalent("gunicorn and unicorn", ("worker_heartbeat_timeout",)),
    "daemon": Equivalent("gunicorn", ("daemonize",)),
    "pidfile": Equivalent("gunicorn and Puma", ("pid_path",)),
    "loglevel": Equivalent("gunicorn", ("log_level",)),
    "errorlog": Equivalent("gunicorn", ("log",),
                           "'-' is stdout for pyse; leave 'log' unset for stderr"),
    "capture_output": Equivalent("gunicorn", ("log_stdout", "log_stderr"),
                                 "both are true by default in pyse"),
    "user": Equivalent("gunicorn", ("worker_chuser",),
                       "gunicorn's switches the workers; 'chuser' switches the whole tree"),
    "group": Equivalent("gunicorn", ("worker_chgroup",),
                        "gunicorn's switches the workers; 'chgroup' switches the whole tree"),
    "umask": Equivalent("gunicorn", ("chumask",)),
    # Puma
    "worker_timeout": Equivalent("Puma", ("worker_heartbeat_timeout",)),
    "worker_shutdown_timeout": Equivalent("Puma", ("worker_graceful_kill_timeout",)),
    # unicorn
    "worker_processes": Equivalent("unicorn", ("workers",)),
    # supervisord
    "numprocs": Equivalent("supervisord", ("workers",)),
}


def unknown_keys(config: Mapping[Any, Any]) -> List[Any]:
    return [key for key in config if key not in KEYS]


def unknown_key_warnings(config: Mapping[Any, Any]) -> List[Tuple[str, str]]:
    """(key, warning) for each unknown key that is another tool's name for a
    pyse key, or a near-miss of one; other unknown keys are the user's own."""
    warnings = []
    for key in unknown_keys(config):
        equivalent = EQUIVALENTS.get(key) if isinstance(key, str) else None
        if equivalent is not None:
            warnings.append((key, equivalent_warning(key, equivalent)))
    listed = {key for key, _ in warnings}
    for key, likely in near_misses(config):
        if key not in listed:
            warnings.append((key, f"Unknown config key {key!r}: did you mean {likely!r}?"))
    return warnings


def equivalent_warning(key: str, equivalent: Equivalent) -> str:
    keys = " and ".join(repr(k) for k in equivalent.keys)
    text = (f"Unknown config key {key!r}: it is {equivalent.tools}'s name for pyse's {keys}; "
            f"pyse does not read {key!r}")
    return f"{text} ({equivalent.hint})" if equivalent.hint else text
