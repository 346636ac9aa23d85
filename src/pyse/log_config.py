"""``log_config``: the user's own Python logging configuration, applied by
pyse in the process that starts the tree, before pyse's own handler
exists; every process forked from it (supervisor, server, workers) inherits
the result.

The value is a :func:`logging.config.dictConfig` dict, or the path of a
file: ``.json``, ``.toml``, ``.yaml``/``.yml`` (PyYAML) holding such a dict,
or ``.ini``/``.conf``/``.cfg`` in :func:`logging.config.fileConfig`'s
format (what gunicorn's ``--log-config`` takes).  A command-line flag needs
only to put the path into the key.

Two defaults differ from the standard library's, both because pyse applies
the configuration after the user's modules were imported: ``version`` may
be left out (it is 1), and ``disable_existing_loggers`` is false unless the
configuration says otherwise (the standard default, true, would silence
every ``logging.getLogger(__name__)`` made at import time).

The checks here run at validation (``pyse.create()``, every reload): the
file is read and its shape checked, so a typo fails before anything forks.
Whether the handlers it names can be built is only known when it is
applied, at start.
"""
from __future__ import annotations

import configparser
import json
import logging
import logging.config
import os
from typing import Any, Mapping, Union

#: what the key takes (the configuration reference shows this)
EXPECTED = ("a logging.config.dictConfig dict, or the path of a .json, .toml or "
            ".yaml/.yml file holding one, or of a .ini/.conf/.cfg file for "
            "logging.config.fileConfig")
DICT_SUFFIXES = (".json", ".toml", ".yaml", ".yml")
INI_SUFFIXES = (".ini", ".conf", ".cfg")
SECTIONS = ("version", "formatters", "filters", "handlers", "loggers", "root", "incremental",
            "disable_existing_loggers")
NAMED_SECTIONS = ("formatters", "filters", "handlers", "loggers")


def check_log_config(value: Any) -> Union[dict[str, Any], str]:
    """The value to keep (a dict, or a path), or ValueError saying what is
    wrong with it."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, str) and value:
        if value.endswith(INI_SUFFIXES):
            read_ini(value)
        else:
            read_dict_file(value)
        return value
    if isinstance(value, Mapping):
        return check_dict(value, "the dict")
    raise ValueError(f"got a {type(value).__name__}")


def check_dict(config: Mapping[str, Any], where: str) -> dict[str, Any]:
    unknown = [key for key in config if key not in SECTIONS]
    if unknown:
        raise ValueError(f"{where} has unknown section(s) {', '.join(map(repr, unknown))}; "
                         f"dictConfig knows {', '.join(SECTIONS)}")
    if config.get("version", 1) != 1:
        raise ValueError(f"{where} has version {config['version']!r}; dictConfig knows only 1")
    for section in NAMED_SECTIONS:
        entries = config.get(section, {})
        if not isinstance(entries, Mapping) or \
                not all(isinstance(v, Mapping) for v in entries.values()):
            raise ValueError(f"{where}: {section!r} must map names to dicts")
    if not isinstance(config.get("root", {}), Mapping):
        raise ValueError(f"{where}: 'root' must be a dict")
    return dict(config)


def read_dict_file(path: str) -> dict[str, Any]:
    """The dict a .json, .toml or .yaml file holds; ValueError otherwise."""
    if not path.endswith(DICT_SUFFIXES):
        raise ValueError(f"{path!r} is neither {', '.join(DICT_SUFFIXES)} "
                         f"nor {', '.join(INI_SUFFIXES)}")
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        data = parse_dict_file(path, raw)
    except ImportError as e:
        raise ValueError(f"cannot read {path}: {e}") from None
    except ValueError as e:   # JSON, TOML, YAML and UTF-8 errors are all ValueErrors
        raise ValueError(f"{path} is not valid: {e}") from None
    if not isinstance(data, Mapping):
        raise ValueError(f"{path} holds a {type(data).__name__}, not a dict")
    return check_dict(data, path)


def parse_dict_file(path: str, raw: bytes) -> Any:
    if path.endswith(".json"):
        return json.loads(raw)
    if path.endswith(".toml"):
        try:
            import tomllib
        except ImportError:   # Python 3.10
            try:
                # the same module under another name; mypy checks against 3.11's tomllib
                import tomli as tomllib  # type: ignore[no-redef,import-not-found,unused-ignore]
            except ImportError:
                raise ImportError("TOML needs Python 3.11 or the tomli package") from None
        return tomllib.loads(raw.decode())
    try:
        import yaml  # type: ignore[import-untyped,unused-ignore]  # types-PyYAML is optional
    except ImportError:
        raise ImportError("YAML needs the PyYAML package") from None
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise ValueError(str(e)) from None


def read_ini(path: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser()
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f)
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror or e}") from None
    except (configparser.Error, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid: {e}") from None
    for section in ("loggers", "handlers", "formatters"):
        if not parser.has_section(section):
            raise ValueError(f"{path} has no [{section}] section, which fileConfig needs")
    return parser


def apply_log_config(value: Union[dict[str, Any], str]) -> bool:
    """Applies a checked ``log_config``; returns whether it set the root
    logger's level (then ``log_level`` leaves the root logger alone).
    Raises ValueError naming what failed."""
    try:
        if isinstance(value, str) and value.endswith(INI_SUFFIXES):
            parser = read_ini(value)
            logging.config.fileConfig(value, disable_existing_loggers=False)
            return parser.has_option("logger_root", "level")
        config = read_dict_file(value) if isinstance(value, str) else dict(value)
        config.setdefault("version", 1)
        config.setdefault("disable_existing_loggers", False)
        logging.config.dictConfig(config)
    except Exception as e:
        # dictConfig may raise nearly anything a handler's constructor does;
        # it wraps most into ValueError, with the cause chained.
        raise ValueError(describe_failure(e)) from e
    root = config.get("root") or config.get("loggers", {}).get("") or {}
    return "level" in root


def describe_failure(error: BaseException) -> str:
    """``Unable to configure handler 'file': [Errno 2] No such file ...``."""
    parts = [f"{error}" or type(error).__name__]
    cause = cause_of(error)
    while cause is not None and len(parts) < 4:
        parts.append(f"{type(cause).__name__}: {cause}")
        cause = cause_of(cause)
    return ": ".join(parts)


def cause_of(error: BaseException) -> "BaseException | None":
    if error.__cause__ is not None or error.__suppress_context__:
        return error.__cause__
    return error.__context__
