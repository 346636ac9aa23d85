"""Type hints: a user's program type-checks under ``mypy --strict`` written
either way pyse documents (subclasses of pyse.Worker/pyse.Server, or plain
classes based on pyse.WorkerModule/pyse.ServerModule), each attribute has
the documented type, and both programs also run.  A plain class with no
base does not type-check: that is why the two bases exist.

The mypy tests need mypy (``pip install '.[typecheck]'``) and are skipped
without it; the stub test and the runs need nothing more than the suite."""
from __future__ import annotations

import ast
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import helpers
import pyse
from pyse._core import lib

pytestmark = pytest.mark.timeout(120)

STUB = Path(pyse.__file__).with_name("_core.pyi")
ROOT = Path(__file__).resolve().parent.parent

# The two documented styles, and what the type checker must make of them.
SUBCLASSED = '''
    import logging
    import sys
    from typing import Any

    import pyse


    class MyServer(pyse.Server):
        def before_run(self) -> None:
            self.greeting: str = self.config["greeting"]

        def stop(self, stop_graceful: bool) -> None:
            self.logger.info("stopping")
            super().stop(stop_graceful)


    class MyWorker(pyse.Worker):
        def initialize(self) -> None:
            self.flag = pyse.BlockingFlag()

        def run(self) -> None:
            assert isinstance(self.server, MyServer)   # MyServer is mixed into the server
            self.logger.info("worker %d says %s", self.worker_id, self.server.greeting)
            while not self.flag.wait_for_set(1.0):
                pass

        def stop(self) -> None:
            self.flag.set()

        def types(self) -> None:
            reveal_type(self.logger)
            reveal_type(self.config)
            reveal_type(self.worker_id)
            reveal_type(self.server)


    if __name__ == "__main__":
        daemon = pyse.create(MyServer, MyWorker, {"greeting": sys.argv[1], "log_level": "info"})
        reveal_type(daemon)
        daemon.run()
'''

MODULES = SUBCLASSED.replace("(pyse.Server)", "(pyse.ServerModule)").replace(
    "(pyse.Worker)", "(pyse.WorkerModule)")

PLAIN = '''
    import pyse


    class MyWorker:
        def run(self) -> None:
            self.logger.info("worker %d", self.worker_id)


    pyse.create(None, MyWorker).run()
'''

#: what reveal_type() must say in both styles: the types the docs give
#: (mypy's "builtins." prefix left out: newer versions omit it)
DOCUMENTED_TYPES = ["logging.Logger", "dict[str, Any]", "int", "pyse.server.Server",
                    "pyse.daemon.Daemon"]


def first_python_block(path: Path, after: str = "") -> str:
    """The first ```python block of a document (after a heading, if given)."""
    text = path.read_text()
    return re.findall(r"```python\n(.*?)```", text[text.index(after):], re.S)[0]


@pytest.fixture(scope="module")
def mypy_lines(tmp_path_factory) -> dict[str, list[str]]:
    """One mypy --strict run over the programs; its lines by program."""
    pytest.importorskip("mypy", reason="mypy is not installed (pip install '.[typecheck]')")
    directory = tmp_path_factory.mktemp("typed")
    programs = {"subclassed": SUBCLASSED, "modules": MODULES, "plain": PLAIN,
                "readme": first_python_block(ROOT / "README.md", "## Use it"),
                "api_doc": first_python_block(ROOT / "docs" / "api.md")}
    for name, source in programs.items():
        (directory / f"{name}.py").write_text(textwrap.dedent(source))
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(directory / "cache"),
         *(f"{name}.py" for name in programs)],
        cwd=directory, capture_output=True, text=True, timeout=100)
    assert result.returncode in (0, 1), result.stdout + result.stderr   # 2: mypy itself failed
    lines: dict[str, list[str]] = {name: [] for name in programs}
    for line in result.stdout.splitlines():
        name = line.split(".py:", 1)[0]
        if name in lines:
            lines[name].append(line)
    return lines


def errors(lines: list[str]) -> list[str]:
    return [line for line in lines if ": error:" in line]


@pytest.mark.parametrize("style", ["subclassed", "modules"])
def test_both_documented_styles_type_check_with_the_documented_types(mypy_lines, style):
    assert errors(mypy_lines[style]) == []
    revealed = [re.sub(r'.*Revealed type is "(.*)"', r"\1", line).replace("builtins.", "")
                for line in mypy_lines[style] if "Revealed type" in line]
    assert revealed == DOCUMENTED_TYPES


def test_a_plain_class_without_a_base_does_not_type_check(mypy_lines):
    plain = "\n".join(mypy_lines["plain"])
    assert '"MyWorker" has no attribute "logger"' in plain
    assert '"MyWorker" has no attribute "worker_id"' in plain


def test_the_first_examples_of_the_readme_and_the_api_doc_type_check(mypy_lines):
    assert errors(mypy_lines["readme"]) == []
    assert errors(mypy_lines["api_doc"]) == []


@pytest.mark.parametrize("style", ["subclassed", "modules"])
def test_the_typed_programs_run(tmp_path, style):
    # reveal_type() is the type checker's; the run prints instead.
    source = SUBCLASSED if style == "subclassed" else MODULES
    source = textwrap.dedent(source).replace("reveal_type(", "print(")
    log = tmp_path / "out.log"
    proc = helpers.start_python(source, tmp_path, ("hello",), stdout=log)
    with helpers.killing_group(proc):
        helpers.wait_for_line(log, r"worker 0 says hello", timeout=30)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    assert "stopping" in log.read_text()


def stub_functions() -> dict[str, int]:
    """The stub's lib functions and their numbers of C arguments."""
    tree = ast.parse(STUB.read_text())
    lib_class = next(node for node in tree.body
                     if isinstance(node, ast.ClassDef) and node.name == "_Lib")
    return {node.name: len(node.args.posonlyargs) - 1      # less self
            for node in lib_class.body if isinstance(node, ast.FunctionDef)}


def stub_constants() -> set[str]:
    tree = ast.parse(STUB.read_text())
    lib_class = next(node for node in tree.body
                     if isinstance(node, ast.ClassDef) and node.name == "_Lib")
    return {node.target.id for node in lib_class.body
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)}


def c_argument_count(function: object) -> int:
    """From cffi's doc of a C function: "int f(struct x *, int);" -> 2."""
    arguments = re.search(r"\((.*)\)", function.__doc__ or "").group(1).strip()
    return 0 if arguments in ("", "void") else arguments.count(",") + 1


def test_the_core_stub_names_every_function_and_constant_of_the_core():
    names = {name for name in dir(lib) if not name.startswith("_")}
    functions = {name for name in names if callable(getattr(lib, name))}
    stubbed = stub_functions()
    assert set(stubbed) == functions
    assert stub_constants() == names - functions
    for name, count in stubbed.items():
        assert count == c_argument_count(getattr(lib, name)), name


def test_the_types_ship_with_the_installed_package():
    assert STUB.is_file()
    assert STUB.with_name("py.typed").is_file()
