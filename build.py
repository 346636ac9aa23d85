"""cffi builder for pyse's C core (out-of-line API mode).

setup.py hands ``ffibuilder`` to setuptools through ``cffi_modules``; running
this file directly builds ``pyse._core`` in place for development.
"""
import os
import re

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(HERE, "csrc")
SOURCES = ["monitor.c", "signals.c", "loop.c", "child.c"]
# The core is strict; the glue cffi generates around it is compiled with it.
STRICT_FLAGS = ["-std=gnu11", "-Wall", "-Wextra", "-Werror", "-O2"]


def read_cdef():
    """The API header without its comments (cdef() takes declarations only)."""
    with open(os.path.join(CSRC, "pyse_core.h")) as f:
        text = f.read()
    return re.sub(r"/\*.*?\*/", "", text, flags=re.S)


ffibuilder = FFI()
ffibuilder.cdef(read_cdef())
ffibuilder.set_source(
    "pyse._core",
    '#include "internal.h"',
    sources=[os.path.relpath(os.path.join(CSRC, s), HERE) for s in SOURCES],
    include_dirs=[os.path.relpath(CSRC, HERE)],
    extra_compile_args=STRICT_FLAGS + os.environ.get("PYSE_CFLAGS", "").split(),
    extra_link_args=os.environ.get("PYSE_LDFLAGS", "").split(),
    libraries=["m", "rt"],
)

if __name__ == "__main__":
    # Sources are relative to the project root, as setuptools wants them.
    os.chdir(HERE)
    ffibuilder.compile(tmpdir=".", verbose=False)
