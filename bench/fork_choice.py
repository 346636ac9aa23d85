"""Why pyse forks with os.fork(): fork in Python vs fork in C, measured.

pyse's design weighed two ways to fork a worker with a sane child Python:

  A. os.fork() in Python, then the core's child setup (pyse_child_after_fork:
     close inherited fds, restore signal dispositions) called through cffi;
  B. fork() in C between PyOS_BeforeFork() and PyOS_AfterFork_Child() /
     PyOS_AfterFork_Parent(), with the GIL held.

This builds B as a throwaway cffi extension (it needs Python.h, which the
core itself must not include) and times, for each, the round trip the
server pays per worker start: fork, the child's setup, the child's
os._exit(0), the parent's waitpid.  It also checks what each way gives the
child: os.register_at_fork hooks (logging's lock reset is one of them).

    python bench/fork_choice.py [--rounds 2000]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def build_c_fork():
    """The B variant: a module with c_fork() that forks the way an extension
    would have to."""
    from cffi import FFI

    ffi = FFI()
    ffi.cdef("int c_fork(void);")
    ffi.set_source("_fork_choice_c", r"""
        #include <Python.h>
        #include <unistd.h>
        static int c_fork(void) {
            /* cffi releases the GIL around calls; take it back, as a fork
               from C must hold it across PyOS_BeforeFork/AfterFork. */
            PyGILState_STATE gil = PyGILState_Ensure();
            PyOS_BeforeFork();
            pid_t pid = fork();
            int saved = errno;
            if (pid == 0)
                PyOS_AfterFork_Child();
            else
                PyOS_AfterFork_Parent();
            PyGILState_Release(gil);
            errno = saved;
            return (int)pid;
        }
    """, define_macros=[("_CFFI_NO_LIMITED_API", None)])  # PyOS_BeforeFork is not in it
    out = tempfile.mkdtemp(prefix="pyse-fork-choice-")
    ffi.compile(tmpdir=out, verbose=False)
    sys.path.insert(0, out)
    import _fork_choice_c  # type: ignore[import-not-found]
    return _fork_choice_c.lib


def round_trips(fork, child_setup, rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        pid = fork()
        if pid == 0:
            child_setup()
            os._exit(0)
        os.waitpid(pid, 0)
        times.append(time.perf_counter() - t0)
    return times


def hooks_ran(fork) -> bool:
    """Does an os.register_at_fork(after_in_child=...) hook run in the child?"""
    r, w = os.pipe()
    pid = fork()
    if pid == 0:
        os.close(r)
        os.write(w, b"1" if os.environ.get("_PYSE_HOOK") == "ran" else b"0")
        os._exit(0)
    os.close(w)
    got = os.read(r, 1)
    os.close(r)
    os.waitpid(pid, 0)
    return got == b"1"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2000)
    args = parser.parse_args()
    from pyse import lowlevel

    c = build_c_fork()
    os.register_at_fork(after_in_child=lambda: os.environ.__setitem__("_PYSE_HOOK", "ran"))
    setup = lowlevel.child_after_fork
    rows = [("A: os.fork() + child setup in C", os.fork, setup),
            ("B: fork() in C between PyOS_BeforeFork/AfterFork", c.c_fork, setup)]
    print(f"{args.rounds} fork/exit/wait round trips each, Python {sys.version.split()[0]}, "
          f"{os.cpu_count()} CPUs\n")
    print("| way | median µs | p99 µs | at-fork hooks run |")
    print("|---|---|---|---|")
    for name, fork, child_setup in rows:
        round_trips(fork, child_setup, 50)   # warm up
        times = sorted(round_trips(fork, child_setup, args.rounds))
        med = statistics.median(times) * 1e6
        p99 = times[int(len(times) * 0.99) - 1] * 1e6
        print(f"| {name} | {med:.0f} | {p99:.0f} | {'yes' if hooks_ran(fork) else 'no'} |")


if __name__ == "__main__":
    main()
