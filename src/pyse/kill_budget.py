"""How long pyse's own escalation lets a stop take: what a service
manager's stop timeout (systemd's ``TimeoutStopSec``, Kubernetes'
``terminationGracePeriodSeconds``) should exceed, so that pyse, not the
manager's SIGKILL, ends the tree.  docs/systemd.md shows the arithmetic.
"""
from __future__ import annotations

from typing import Any, Optional

from pyse.process_manager import ORPHAN_KILL_GRACE


def kill_budget(config: dict[str, Any], prefix: str) -> Optional[float]:
    """Seconds from a graceful stop of one monitored child (prefix
    ``worker_`` or ``server_``) to the KILL that ends it at the latest, by
    the kill escalation of the validated configuration; None when it may
    never be killed (a timeout of -1).

    The graceful stop turns immediate after ``graceful_kill_timeout`` G;
    from then on a QUIT goes out at once and again after I, I + J, ... (I
    the interval, J the increment), the k-th step at ``k*I + J*k*(k-1)/2``;
    KILL replaces QUIT at the first step at or after
    ``immediate_kill_timeout`` T."""
    graceful = config[prefix + "graceful_kill_timeout"]
    timeout = config[prefix + "immediate_kill_timeout"]
    if graceful < 0 or timeout < 0:
        return None
    interval = config[prefix + "immediate_kill_interval"]
    increment = config[prefix + "immediate_kill_interval_increment"]
    k, offset = 0, 0.0
    while offset < timeout:
        k += 1
        offset = k * interval + increment * k * (k - 1) / 2
    return float(graceful) + offset


def stop_budget(config: dict[str, Any]) -> Optional[float]:
    """Seconds a graceful stop of the whole tree takes at the latest, by
    pyse's own escalation; None when nothing bounds it.

    - Process and spawn workers: the workers' kill budget.
    - Thread and embedded workers cannot be killed: no bound, unless a
      supervisor kills their server process (the server's kill budget).
    - Under a supervisor, process workers are also bounded by the server's
      kill budget plus what an orphaned worker gets once its server is
      killed (``worker_orphan_timeout`` and the 1 s backstop); whichever
      comes first.  A spawned command whose server is killed only gets a
      TERM, so for spawn workers only their own budget counts, and only if
      the server outlives it."""
    worker_type = config["worker_type"]
    workers = kill_budget(config, "worker_") if worker_type in ("process", "spawn") else None
    if not config["supervisor"]:
        return workers
    server = kill_budget(config, "server_")
    if worker_type == "spawn":
        return workers if server is None or (workers is not None and workers <= server) else None
    if server is not None and worker_type == "process":
        server += config["worker_orphan_timeout"] + ORPHAN_KILL_GRACE
    bounds = [b for b in (workers, server) if b is not None]
    return min(bounds) if bounds else None
