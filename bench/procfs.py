"""What /proc says about a process: on-CPU time, wake-ups, memory; and the
machine's limits that decide whether a server of N workers can run here."""
from __future__ import annotations

import os
import resource
from dataclasses import dataclass
from pathlib import Path
from typing import Optional


@dataclass(frozen=True)
class CpuReading:
    cpu_ns: int        # on-CPU time of every thread (schedstat), nanoseconds
    switches: int      # voluntary + involuntary context switches, every thread

    def __sub__(self, other: "CpuReading") -> "CpuReading":
        return CpuReading(self.cpu_ns - other.cpu_ns, self.switches - other.switches)


def read_cpu(pid: int) -> CpuReading:
    """CPU used so far by every live thread of ``pid`` (threads that exited
    are not counted).  schedstat is in nanoseconds, unlike utime/stime,
    which move in 10 ms ticks and read 0 for a mostly idle process."""
    cpu_ns = switches = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            cpu_ns += int((task / "schedstat").read_text().split()[0])
            for line in (task / "status").read_text().splitlines():
                if "ctxt_switches:" in line:  # voluntary_ and nonvoluntary_
                    switches += int(line.split()[1])
        except (FileNotFoundError, ProcessLookupError):
            continue  # the thread exited between listing and reading
    return CpuReading(cpu_ns, switches)


@dataclass(frozen=True)
class Memory:
    rss_kb: int        # resident, shared pages included
    uss_kb: int        # private pages only: what this process alone costs


def read_memory(pid: int) -> Memory:
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":", 1)
        fields[name] = int(value.split()[0])
    return Memory(fields["Rss"], fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0))


def loadavg() -> str:
    """The whole of /proc/loadavg: 1, 5 and 15 minute load, runnable/total
    tasks, last pid."""
    return Path("/proc/loadavg").read_text().strip()


def mem_available_kb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1])
    raise RuntimeError("/proc/meminfo has no MemAvailable line")


def raise_fd_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit (the bench holds a pidfd per
    worker, and the servers it starts inherit the limit); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def tasks_running() -> int:
    return int(loadavg().split()[3].split("/")[1])


def cannot_run(workers: int, threads_per_worker: int, fds_per_worker: int,
               kb_per_worker: Optional[int]) -> Optional[str]:
    """Why this machine cannot hold a server of ``workers`` workers, or None.
    ``kb_per_worker`` is a measured private size (None: not known yet)."""
    fds = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    need_fds = workers * fds_per_worker + 256
    if fds < need_fds:
        return f"open files limit {fds} < ~{need_fds} (raise `ulimit -n`)"
    tasks = workers * (threads_per_worker + 1) + 256
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    threads_max = int(Path("/proc/sys/kernel/threads-max").read_text())
    free_tasks = min(pid_max, threads_max) - tasks_running()
    if free_tasks < tasks:
        return f"~{tasks} tasks needed, {free_tasks} left under pid_max/threads-max"
    nproc = resource.getrlimit(resource.RLIMIT_NPROC)[0]
    if nproc != resource.RLIM_INFINITY and os.getuid() != 0 and nproc < tasks_running() + tasks:
        return f"process limit {nproc} too low (raise `ulimit -u`)"
    if kb_per_worker is not None:
        need_kb = workers * kb_per_worker * 3 // 2
        if mem_available_kb() < need_kb:
            return (f"~{need_kb // 1024} MB needed ({kb_per_worker} kB private per worker), "
                    f"{mem_available_kb() // 1024} MB available")
    return None
