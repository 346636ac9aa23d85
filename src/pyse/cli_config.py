"""The configuration ``pyse run`` hands to :func:`pyse.create`, in layers.

From lowest to highest precedence:

1. pyse's defaults (:data:`pyse.config.KEYS`);
2. the config file (``-c FILE``, or ``-c`` inside ``PYSE_CMD_ARGS``), read
   again at every reload and restart;
3. ``PYSE_CMD_ARGS``: options of ``pyse run`` in the environment, split as a
   shell would (gunicorn's ``GUNICORN_CMD_ARGS``);
4. the command line: the named flags (``-w``, ``-k``, ...), then ``--set``.

Every value remembers where it came from (a :class:`Setting`), so that an
error names the file or the flag, and ``--print-config`` can say where each
value came from.  Problems are collected, not raised at the first one, so
that ``--check-config`` lists them all.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, TextIO, Tuple

from pyse import config as config_mod
from pyse.config import KEYS, ConfigError
from pyse.config_equivalents import unknown_key_warnings
from pyse.config_file import read_config_file

ENV_VAR = "PYSE_CMD_ARGS"
DEFAULT_SOURCE = "default"


class UsageError(Exception):
    """A command line argparse rejects; ``prog`` is the (sub)command."""

    def __init__(self, prog: str, message: str) -> None:
        super().__init__(message)
        self.prog = prog


class OptionParser(argparse.ArgumentParser):
    """An ArgumentParser that raises :class:`UsageError` instead of printing
    the usage and exiting, so the caller decides how an error reads."""

    def error(self, message: str) -> Any:  # argparse's hook: must not return
        raise UsageError(self.prog, message)


def parse_value(text: str) -> Any:
    """--set and -w values are JSON when they parse as JSON (4, true, [1, 2]),
    else the string itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


@dataclass(frozen=True)
class ConfigFlag:
    """A flag of ``pyse run`` that sets one key."""

    flags: Tuple[str, ...]
    key: str
    metavar: Optional[str]
    help: str
    convert: Callable[[str], Any] = str

    @property
    def dest(self) -> str:
        return "key_" + self.key

    @property
    def name(self) -> str:
        return self.flags[-1]


CONFIG_FLAGS = (
    ConfigFlag(("-w", "--workers"), "workers", "N", "number of workers", parse_value),
    ConfigFlag(("-k", "--worker-type"), "worker_type", "TYPE",
               "what runs the workers: " + KEYS["worker_type"].expected),
    ConfigFlag(("-D", "--daemon"), "daemonize", None,
               "detach from the terminal; --no-daemon stays in the foreground"),
    ConfigFlag(("-p", "--pid-file"), "pid_path", "FILE",
               "write the daemon's pid to FILE (locked while it runs)"),
    ConfigFlag(("--log-file",), "log", "FILE", "log to FILE; '-' is stdout"),
    ConfigFlag(("--log-level",), "log_level", "LEVEL",
               "lowest level logged: " + ", ".join(config_mod.LOG_LEVELS)
               + " (warning and critical are accepted)"),
    ConfigFlag(("--log-format",), "log_format", "FORMAT",
               "the log's lines: serverengine (Ruby Logger's) or json (one object a line)"),
    ConfigFlag(("--log-config",), "log_config", "FILE",
               "Python logging configuration applied in every process: a dictConfig "
               "dict in .json/.toml/.yaml, or an .ini/.conf/.cfg fileConfig file"),
)


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """The options that set configuration: on ``pyse run`` and in PYSE_CMD_ARGS."""
    parser.add_argument("-c", "--config", metavar="FILE",
                        help="config file; the extension picks the format: .toml, .json, "
                             ".yaml/.yml (with PyYAML) or .py; read again at every reload "
                             "and restart")
    for flag in CONFIG_FLAGS:
        default = KEYS[flag.key].default
        shown = "none" if default is None else json.dumps(default)
        help_text = f"{flag.help} (sets {flag.key}; default: {shown})"
        if flag.metavar is None:
            parser.add_argument(*flag.flags, dest=flag.dest, default=None, help=help_text,
                                action=argparse.BooleanOptionalAction)
        else:
            parser.add_argument(*flag.flags, dest=flag.dest, metavar=flag.metavar,
                                help=help_text)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="set any key; VALUE is JSON if it parses as JSON (4, true, "
                             "[1, 2], null), else a string; repeatable; wins over the flags")


@dataclass(frozen=True)
class Setting:
    value: Any
    #: where the value came from: "default", "config file '/x.toml'",
    #: "PYSE_CMD_ARGS --workers", "command line --set", ...
    source: str


def option_settings(args: argparse.Namespace, origin: str,
                    problems: List[str]) -> Dict[str, Setting]:
    """The keys options set (origin: "command line" or PYSE_CMD_ARGS); a
    malformed --set is added to problems."""
    settings = {}
    for flag in CONFIG_FLAGS:
        text = getattr(args, flag.dest, None)
        if isinstance(text, bool):  # --daemon / --no-daemon
            name = flag.name if text else "--no-" + flag.name[2:]
            settings[flag.key] = Setting(text, f"{origin} {name}")
        elif text is not None:
            settings[flag.key] = Setting(flag.convert(text), f"{origin} {flag.name}")
    for item in args.set:
        key, sep, text = item.partition("=")
        if not sep or not key:
            problems.append(f"{origin} --set {item!r}: expected KEY=VALUE")
            continue
        settings[key] = Setting(parse_value(text), f"{origin} --set")
    return settings


def parse_env_options(text: str, problems: List[str]) -> Optional[argparse.Namespace]:
    """PYSE_CMD_ARGS as options of ``pyse run`` (None if unset, empty or bad)."""
    try:
        words = shlex.split(text)
    except ValueError as e:
        problems.append(f"{ENV_VAR}: cannot split it as a shell would: {e}")
        return None
    if not words:
        return None
    parser = OptionParser(prog=ENV_VAR, add_help=False, allow_abbrev=False)
    add_config_options(parser)
    try:
        return parser.parse_args(words)
    except UsageError as e:
        problems.append(f"{ENV_VAR}: {e}")
        return None


class LayeredConfig:
    """``pyse run``'s configuration source.  pyse calls it at start and again
    at every reload and restart: the file is read anew each time, the options
    were parsed once.  A bad file or value raises ConfigError naming where it
    came from."""

    def __init__(self, file_path: Optional[str], layers: Sequence[Mapping[str, Setting]],
                 option_problems: Sequence[str] = ()) -> None:
        # Absolute: the message of a failed reload names the file in a log
        # read far from the directory pyse was started in.
        self.file_path = os.path.abspath(file_path) if file_path else None
        self.layers = list(layers)
        self.option_problems = list(option_problems)

    @classmethod
    def from_options(cls, args: argparse.Namespace,
                     environ: Mapping[str, str]) -> "LayeredConfig":
        problems: List[str] = []
        env_args = parse_env_options(environ.get(ENV_VAR, ""), problems)
        layers = []
        if env_args is not None:
            layers.append(option_settings(env_args, ENV_VAR, problems))
        layers.append(option_settings(args, "command line", problems))
        file_path = args.config or (env_args.config if env_args is not None else None)
        return cls(file_path, layers, problems)

    @property
    def file_source(self) -> str:
        return f"config file {self.file_path!r}"

    def collect(self) -> Tuple[Dict[Any, Setting], List[str]]:
        """Every key set, with its source, and every problem found."""
        problems = list(self.option_problems)
        settings: Dict[Any, Setting] = {}
        if self.file_path is not None:
            try:
                from_file = read_config_file(self.file_path)
            except ConfigError as e:
                problems.append(str(e))
                from_file = {}
            settings.update((key, Setting(value, self.file_source))
                            for key, value in from_file.items())
        for layer in self.layers:
            settings.update(layer)
        problems.extend(value_problems(settings))
        return settings, problems

    def __call__(self) -> Dict[Any, Any]:
        settings, problems = self.collect()
        if problems:
            first = problems[0]
            raise ConfigError(first if len(problems) == 1
                              else f"{len(problems)} problems: " + "; ".join(problems))
        return {key: setting.value for key, setting in settings.items()}


def value_problems(settings: Mapping[Any, Setting]) -> List[str]:
    """Each bad key or value, prefixed with where it came from."""
    problems = []
    for key, setting in settings.items():
        if not isinstance(key, str):
            problems.append(f"{setting.source}: config key {key!r} is a {type(key).__name__}; "
                            f"keys must be strings")
        elif key in KEYS:
            try:
                config_mod.validate({key: setting.value})
            except ConfigError as e:
                problems.append(f"{setting.source}: {e}")
    return problems


def unknown_key_notes(settings: Mapping[Any, Setting]) -> List[str]:
    """One note per key pyse does not know: another tool's name or a typo of
    a pyse key, or else the user's own key."""
    warnings = dict(unknown_key_warnings(settings))
    notes = []
    for key, setting in settings.items():
        if key in KEYS:
            continue
        text = warnings.get(key) or f"config key {key!r} is not a pyse key; it is kept for your code"
        notes.append(f"{setting.source}: {text}")
    return notes


def check_config(layered: LayeredConfig, app_problems: Callable[[Dict[str, Any]], List[str]],
                 out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """--check-config: every problem on err, 0 if there is none, else 1."""
    settings, problems = layered.collect()
    if not problems:
        problems = app_problems(config_mod.validate(
            {key: setting.value for key, setting in settings.items()}))
    for note in unknown_key_notes(settings):
        print(f"pyse: note: {note}", file=err)
    for problem in problems:
        print(f"pyse: error: {problem}", file=err)
    if problems:
        print(f"pyse: the configuration is not valid ({len(problems)} "
              f"problem{'s' if len(problems) > 1 else ''})", file=err)
        return 1
    print("configuration OK", file=out)
    return 0


def print_config(layered: LayeredConfig, out: TextIO = sys.stdout,
                 err: TextIO = sys.stderr) -> int:
    """--print-config: each key, its value and its source; 1 if invalid."""
    settings, problems = layered.collect()
    if problems:
        for problem in problems:
            print(f"pyse: error: {problem}", file=err)
        return 1
    config = config_mod.validate({key: setting.value for key, setting in settings.items()})
    rows = [("key", "value", "source")]
    for key in KEYS:
        source = settings[key].source if key in settings else DEFAULT_SOURCE
        rows.append((key, show_value(key, config[key]), source))
    for key, setting in settings.items():
        if key not in KEYS:
            rows.append((str(key), show_value(key, setting.value),
                         f"{setting.source} (not a pyse key)"))
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    for key, value, source in rows:
        print(f"{key:<{widths[0]}}  {value:<{widths[1]}}  {source}", file=out)
    return 0


def show_value(key: Any, value: Any) -> str:
    """A value as the user would write it: JSON where it is JSON, octal for a
    umask, a signal's name; repr() for objects (a logger)."""
    spec = KEYS.get(key) if isinstance(key, str) else None
    if spec is not None and value is not None:
        if spec.check is config_mod.umask:
            return f'"{value:03o}"'
        if spec.check is config_mod.signal_spec:
            return json.dumps(signal.Signals(value).name)
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)
