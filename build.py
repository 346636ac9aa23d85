"""cffi builder for pyse's C core (out-of-line API mode).

setup.py hands ``ffibuilder`` to setuptools through ``cffi_modules``; running
this file directly (``python build.py``) builds ``pyse._core`` in place, in
``src/pyse/``, for development (it needs setuptools >= 77 in the venv).
"""
import os
import re

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(HERE, "csrc")
# Every .c file of csrc/ is part of the core (the C driver of the memory
# checks, tests/c/test_core.c, links the same set).
SOURCES = sorted(name for name in os.listdir(CSRC) if name.endswith(".c"))
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
    libraries=["rt"],
)

if __name__ == "__main__":
    # A development build in place (src/pyse/_core.*.so), the way
    # setuptools builds it for an editable install: cffi's own compile()
    # would name and place the module differently.
    import subprocess
    import sys

    sys.exit(subprocess.call([sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
                             cwd=HERE))
