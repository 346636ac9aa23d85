"""Memory safety of the C core: tests/c/test_core.c linked with csrc/*.c,
under AddressSanitizer + UndefinedBehaviorSanitizer (+ LeakSanitizer), and
under valgrind memcheck when valgrind is installed.

By hand, from the repository root:

    gcc -std=gnu11 -Wall -Wextra -Werror -g -fsanitize=address,undefined \\
        -fno-sanitize-recover=all -fno-omit-frame-pointer -Icsrc \\
        csrc/*.c tests/c/test_core.c -lrt -lpthread -o /tmp/test_core_asan
    ASAN_OPTIONS=detect_leaks=1 /tmp/test_core_asan

    gcc -std=gnu11 -Wall -Wextra -Werror -g -O1 -Icsrc \\
        csrc/*.c tests/c/test_core.c -lrt -lpthread -o /tmp/test_core
    valgrind --error-exitcode=99 --leak-check=full \\
        --errors-for-leak-kinds=definite,indirect --child-silent-after-fork=yes \\
        /tmp/test_core

Both print "<n> checks, 0 failed" and exit 0.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
DRIVER = Path(__file__).resolve().parent / "c" / "test_core.c"
STRICT = ["-std=gnu11", "-Wall", "-Wextra", "-Werror", "-g"]
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all",
            "-fno-omit-frame-pointer"]
SANITIZER_REPORT_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer",
                            "runtime error:", "SUMMARY: UndefinedBehaviorSanitizer")

pytestmark = pytest.mark.skipif(not CSRC.is_dir() or shutil.which("gcc") is None,
                                reason="needs gcc and the C sources (csrc/) beside tests/")


def compile_driver(out: Path, extra_flags: list[str]) -> subprocess.CompletedProcess:
    sources = sorted(str(p) for p in CSRC.glob("*.c"))
    cmd = ["gcc", *STRICT, *extra_flags, f"-I{CSRC}", *sources, str(DRIVER),
           "-lrt", "-lpthread", "-o", str(out)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def sanitizers_work(tmp_path: Path) -> str:
    """'' if gcc can build and run an ASan+UBSan program here, else why not."""
    probe = tmp_path / "probe.c"
    probe.write_text("int main(void) { return 0; }\n")
    built = subprocess.run(["gcc", *SANITIZE, str(probe), "-o", str(tmp_path / "probe")],
                           capture_output=True, text=True, timeout=60)
    if built.returncode != 0:
        return f"gcc cannot build with -fsanitize=address,undefined: {built.stderr.strip()}"
    ran = subprocess.run([str(tmp_path / "probe")], capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, ASAN_OPTIONS="detect_leaks=0"))
    if ran.returncode != 0:
        return f"an ASan program does not run here: {ran.stderr.strip()[:300]}"
    return ""


def leak_sanitizer_works(tmp_path: Path) -> bool:
    """LeakSanitizer needs ptrace-like access to stop threads; some sandboxes
    refuse it.  A program with one real leak must be reported."""
    probe = tmp_path / "leak.c"
    probe.write_text("#include <stdlib.h>\nvoid *p;\n"
                     "int main(void) { p = malloc(7); p = 0; return 0; }\n")
    subprocess.run(["gcc", *SANITIZE, str(probe), "-o", str(tmp_path / "leak")],
                   check=True, capture_output=True, timeout=60)
    ran = subprocess.run([str(tmp_path / "leak")], capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, ASAN_OPTIONS="detect_leaks=1"))
    return "ERROR: LeakSanitizer: detected memory leaks" in ran.stderr


@pytest.mark.timeout(300)
def test_core_under_address_and_undefined_sanitizers(tmp_path):
    why_not = sanitizers_work(tmp_path)
    if why_not:
        pytest.skip(why_not)
    exe = tmp_path / "test_core_asan"
    built = compile_driver(exe, SANITIZE)
    assert built.returncode == 0, built.stderr
    leaks = leak_sanitizer_works(tmp_path)
    env = dict(os.environ,
               ASAN_OPTIONS=f"detect_leaks={int(leaks)}:abort_on_error=0:halt_on_error=1",
               UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1")
    ran = subprocess.run([str(exe)], capture_output=True, text=True, timeout=240, env=env)
    output = ran.stdout + ran.stderr
    print(output)
    print("LeakSanitizer:", "on" if leaks else "off (not supported here)")
    assert ran.returncode == 0, output
    assert not any(m in output for m in SANITIZER_REPORT_MARKERS), output
    assert ", 0 failed" in ran.stdout


@pytest.mark.timeout(600)
@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
def test_core_under_valgrind_memcheck(tmp_path):
    exe = tmp_path / "test_core"
    built = compile_driver(exe, ["-O1"])
    assert built.returncode == 0, built.stderr
    ran = subprocess.run(
        ["valgrind", "--error-exitcode=99", "--leak-check=full",
         "--errors-for-leak-kinds=definite,indirect", "--child-silent-after-fork=yes",
         str(exe)],
        capture_output=True, text=True, timeout=540)
    output = ran.stdout + ran.stderr
    print(output)
    assert ran.returncode == 0, output
    assert "ERROR SUMMARY: 0 errors" in ran.stderr
    assert ", 0 failed" in ran.stdout
