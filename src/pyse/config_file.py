"""Configuration files for ``pyse run -c FILE``: the extension says the format.

=============  ==============================================================
extension      format
=============  ==============================================================
``.toml``      TOML (``tomllib``; on Python 3.10 the ``tomli`` package)
``.json``      JSON, an object at the top
``.yaml/.yml`` YAML through PyYAML's safe loader, when PyYAML is installed
``.py``        Python that sets names, as gunicorn's ``-c conf.py``: the file
               runs, and its module-level names become keys (see
               :func:`names_of_python_file`)
=============  ==============================================================

Every failure is a :class:`pyse.ConfigError` whose message begins
``config file '<path>':``, because the file is read again at every reload and
restart, in a daemon whose log is then the only place the error shows: the
message must say which file is wrong, not which function read it.
"""
from __future__ import annotations

import inspect
import json
import os
from typing import Any, Callable, Dict, Mapping

from pyse.config import KEYS, ConfigError

__all__ = ["read_config_file", "FORMATS", "format_names"]


def read_config_file(path: str) -> Dict[str, Any]:
    """The keys the file at path sets, as a new dict; ConfigError naming the
    file for an unknown extension, an unreadable file, a parse error, or a
    top level that is not a mapping."""
    reader = FORMATS.get(extension_of(path))
    if reader is None:
        raise ConfigError(f"config file {path!r}: unknown format {extension_of(path) or '(none)'!r}; "
                          f"the extension must be one of {format_names()}")
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError(f"config file {path!r}: cannot read it: {e.strerror}") from e
    data = reader(path, raw)
    if not isinstance(data, Mapping):
        raise ConfigError(f"config file {path!r}: expected a mapping of keys to values at the "
                          f"top, got {type(data).__name__}")
    return dict(data)


def extension_of(path: str) -> str:
    return os.path.splitext(path)[1].lower()


def read_toml(path: str, raw: bytes) -> Any:
    try:
        import tomllib as toml
    except ImportError:  # Python 3.10: the same parser is on PyPI as tomli
        try:
            # the same module under another name; mypy checks against 3.11's tomllib
            import tomli as toml  # type: ignore[no-redef, import-not-found, unused-ignore]
        except ImportError:
            raise ConfigError(f"config file {path!r}: reading TOML needs Python 3.11 or the "
                              f"tomli package; or use {format_names()}") from None
    try:
        return toml.loads(raw.decode())
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path!r}: not UTF-8 text: {e}") from e
    except toml.TOMLDecodeError as e:
        raise ConfigError(f"config file {path!r}: not valid TOML: {e}") from e


def read_json(path: str, raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError as e:  # UnicodeDecodeError is one too
        raise ConfigError(f"config file {path!r}: not valid JSON: {e}") from e


def read_yaml(path: str, raw: bytes) -> Any:
    try:
        import yaml  # type: ignore[import-untyped, unused-ignore]  # types-PyYAML is optional
    except ImportError:
        raise ConfigError(f"config file {path!r}: reading YAML needs PyYAML, which is not "
                          f"installed (pip install PyYAML); or use .toml, .json or .py") from None
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path!r}: not valid YAML: {yaml_problem(e)}") from e
    return {} if data is None else data  # an empty file: no keys


def yaml_problem(error: Exception) -> str:
    """PyYAML's multi-line message as one line: the problem and where."""
    problem = getattr(error, "problem", None)
    mark = getattr(error, "problem_mark", None)
    if problem and mark is not None:
        return f"{problem} (line {mark.line + 1}, column {mark.column + 1})"
    return " ".join(str(error).split())


def read_python(path: str, raw: bytes) -> Any:
    try:
        code = compile(raw, path, "exec")
    except SyntaxError as e:
        raise ConfigError(f"config file {path!r}: not valid Python: {e.msg} "
                          f"(line {e.lineno})") from e
    except ValueError as e:  # a NUL byte, before Python 3.12
        raise ConfigError(f"config file {path!r}: not valid Python: {e}") from e
    namespace: Dict[str, Any] = {"__name__": "pyse_config_file", "__file__": path}
    try:
        exec(code, namespace)
    except Exception as e:
        raise ConfigError(f"config file {path!r}: running it raised {type(e).__name__}: {e}"
                          f"{line_in(e, path)}") from e
    return names_of_python_file(path, namespace)


def line_in(error: BaseException, path: str) -> str:
    """' (line N)' for the deepest frame of the traceback that is in path."""
    line = None
    tb = error.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == path:
            line = tb.tb_lineno
        tb = tb.tb_next
    return f" (line {line})" if line is not None else ""


def names_of_python_file(path: str, namespace: Mapping[str, Any]) -> Dict[str, Any]:
    """The keys a Python config file sets.

    If the file defines ``__all__``, exactly the names it lists.  Otherwise
    every module-level name that does not begin with ``_``, except modules,
    classes and functions (what ``import`` and ``def`` leave behind, which
    are tools for computing values, not values); a name that is a pyse key
    counts whatever its value, so ``logger_class = MyLogger`` works."""
    listed = namespace.get("__all__")
    if listed is not None:
        if isinstance(listed, str) or not all(isinstance(n, str) for n in listed):
            raise ConfigError(f"config file {path!r}: __all__ must be a list of names")
        missing = [n for n in listed if n not in namespace]
        if missing:
            raise ConfigError(f"config file {path!r}: __all__ lists {missing[0]!r}, "
                              f"which the file does not set")
        return {n: namespace[n] for n in listed}
    return {name: value for name, value in namespace.items()
            if not name.startswith("_") and (name in KEYS or not is_tool(value))}


def is_tool(value: Any) -> bool:
    return (inspect.ismodule(value) or inspect.isclass(value) or inspect.isfunction(value)
            or inspect.isbuiltin(value))


#: extension -> reader(path, raw bytes) -> the parsed top level
FORMATS: Mapping[str, Callable[[str, bytes], Any]] = {
    ".toml": read_toml,
    ".json": read_json,
    ".yaml": read_yaml,
    ".yml": read_yaml,
    ".py": read_python,
}


def format_names() -> str:
    return ", ".join(FORMATS)
