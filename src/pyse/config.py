"""Configuration: every key pyse knows, its default, its check, and whether a
reload (USR2) puts it into effect.

One table, :data:`KEYS`, drives the validator, the defaults, the reload
rules and the reference in ``docs/configuration.md``
(``python -m pyse config-reference > docs/configuration.md`` writes it; a test fails
when the two differ).

Keys and defaults are ServerEngine's.  Unknown keys are kept untouched, since
user code reads its own keys from ``config``; one that looks like a typo of a
known key is reported by :func:`near_misses`.  ``None`` for a known key means
"the default", as ``nil`` does in ServerEngine.
"""
from __future__ import annotations

import difflib
import grp
import logging
import numbers
import os
import pwd
import signal
from dataclasses import dataclass
from typing import Any, Callable, Generic, List, Mapping, Optional, Tuple, TypeVar

from pyse.log_config import EXPECTED as LOG_CONFIG_EXPECTED
from pyse.log_config import check_log_config

__all__ = ["ConfigError", "KEYS", "Key", "validate", "load", "near_misses",
           "restart_only_changes", "reference_markdown", "LOG_LEVELS"]


class ConfigError(ValueError):
    """A bad configuration.  ``key`` and ``value`` name what was wrong (``key``
    is None when the configuration as a whole is wrong)."""

    def __init__(self, message: str, key: Optional[str] = None, value: Any = None) -> None:
        super().__init__(message)
        self.key = key
        self.value = value


class _Bad(Exception):
    """Raised by a checker: carries what was expected."""

    def __init__(self, expected: str) -> None:
        super().__init__(expected)
        self.expected = expected


# -- checkers: value -> normalised value, or raise _Bad(expected) -------------
Checked = TypeVar("Checked")


@dataclass(frozen=True)
class Checker(Generic[Checked]):
    """A check of one key's value: returns the value normalised, or raises
    _Bad.  It carries what it expects, for errors and the reference."""

    expected: str
    check: Callable[[Any], Checked]

    def __call__(self, value: Any) -> Checked:
        return self.check(value)


def expects(expected: str) -> Callable[[Callable[[Any], Checked]], Checker[Checked]]:
    def mark(check: Callable[[Any], Checked]) -> Checker[Checked]:
        return Checker(expected, check)
    return mark


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


@expects("true or false")
def boolean(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    raise _Bad("true or false")


def number(minimum: float = 0.0, *, positive: bool = False, never: bool = False) -> Checker[float]:
    if positive:
        expected = "a number of seconds greater than 0"
    else:
        expected = f"a number >= {minimum:g}"
    if never:
        expected += ", or -1 for never"

    def check(v: Any) -> float:
        if not _is_number(v) or v != v or v in (float("inf"), float("-inf")):
            raise _Bad(expected)
        # ints stay ints (they print as given); other Reals become floats
        value = v if isinstance(v, (int, float)) else float(v)
        if never and value == -1:
            return value
        if (positive and value <= 0) or value < minimum:
            raise _Bad(expected)
        return value
    return Checker(expected, check)


def integer(minimum: int, maximum: Optional[int] = None) -> Checker[int]:
    expected = (f"an integer from {minimum} to {maximum}" if maximum is not None
                else f"an integer >= {minimum}")

    def check(v: Any) -> int:
        if not isinstance(v, numbers.Integral) or isinstance(v, bool):
            raise _Bad(expected)
        value = int(v)
        if value < minimum or (maximum is not None and value > maximum):
            raise _Bad(expected)
        return value
    return Checker(expected, check)


@expects("a non-empty string")
def text(v: Any) -> str:
    if isinstance(v, str) and v:
        return v
    raise _Bad("a non-empty string")


@expects("a file path (a non-empty string)")
def path(v: Any) -> str:
    if isinstance(v, os.PathLike):
        v = os.fspath(v)
    if isinstance(v, str) and v and "\0" not in v:
        return v
    raise _Bad("a file path (a non-empty string)")


def choice(*allowed: str, aliases: Optional[Mapping[str, str]] = None) -> Checker[str]:
    aliases = dict(aliases or {})
    expected = "one of " + ", ".join(repr(a) for a in allowed)

    def check(v: Any) -> str:
        if isinstance(v, str):
            v2 = aliases.get(v.lower(), v.lower())
            if v2 in allowed:
                return v2
        raise _Bad(expected)
    return Checker(expected, check)


@expects("a string with at most one %d or %s for the worker id, e.g. 'se-worker-%d'")
def process_name_format(v: Any) -> str:
    expected = process_name_format.expected
    if not isinstance(v, str) or not v:
        raise _Bad(expected)
    try:
        v % 0
    except (TypeError, ValueError):
        # more than one conversion, a bad one, or a stray '%'
        try:
            v % ()
        except (TypeError, ValueError):
            raise _Bad(expected) from None
    return v


def format_process_name(fmt: str, worker_id: int) -> str:
    """A validated ``worker_process_name`` for one worker (a name without a
    conversion is used as it is)."""
    try:
        return fmt % (worker_id,)
    except TypeError:
        return fmt


@expects("a list of exit codes (integers from 0 to 255)")
def exit_codes(v: Any) -> List[int]:
    expected = exit_codes.expected
    if isinstance(v, (str, bytes)) or not hasattr(v, "__iter__"):
        raise _Bad(expected)
    out = []
    for code in v:
        if not isinstance(code, numbers.Integral) or isinstance(code, bool) or not 0 <= int(code) <= 255:
            raise _Bad(expected)
        out.append(int(code))
    return out


@expects("an existing user name or a uid (integer >= 0)")
def user(v: Any) -> int | str:
    expected = user.expected
    if isinstance(v, numbers.Integral) and not isinstance(v, bool) and int(v) >= 0:
        return int(v)
    if isinstance(v, str) and v:
        if v.isdigit():
            return int(v)
        try:
            pwd.getpwnam(v)
        except KeyError:
            raise _Bad(expected + f"; no user named {v!r} on this system") from None
        return v
    raise _Bad(expected)


@expects("an existing group name or a gid (integer >= 0)")
def group(v: Any) -> int | str:
    expected = group.expected
    if isinstance(v, numbers.Integral) and not isinstance(v, bool) and int(v) >= 0:
        return int(v)
    if isinstance(v, str) and v:
        if v.isdigit():
            return int(v)
        try:
            grp.getgrnam(v)
        except KeyError:
            raise _Bad(expected + f"; no group named {v!r} on this system") from None
        return v
    raise _Bad(expected)


@expects("a umask: an integer from 0 to 0o777, or an octal string like '022'")
def umask(v: Any) -> int:
    expected = umask.expected
    if isinstance(v, numbers.Integral) and not isinstance(v, bool) and 0 <= int(v) <= 0o777:
        return int(v)
    if isinstance(v, str) and v and all(c in "01234567" for c in v.removeprefix("0o")):
        value = int(v.removeprefix("0o"), 8)
        if value <= 0o777:
            return value
    raise _Bad(expected)


@expects("a file path, '-' for stdout, or an object with write()")
def log_destination(v: Any) -> Any:
    if hasattr(v, "write") and not isinstance(v, (str, bytes)):
        return v            # an open stream, as ServerEngine accepts an IO
    try:
        return path(v)
    except _Bad:
        raise _Bad(log_destination.expected) from None


@expects("a subclass of logging.Logger")
def logger_class(v: Any) -> type:
    if isinstance(v, type) and issubclass(v, logging.Logger):
        return v
    raise _Bad("a subclass of logging.Logger")


@expects("a logging.Logger instance")
def logger_instance(v: Any) -> logging.Logger:
    if isinstance(v, logging.Logger):
        return v
    raise _Bad("a logging.Logger instance")


@expects(LOG_CONFIG_EXPECTED)
def log_config(v: Any) -> Any:
    # The dictConfig checks live beside the code that applies them.
    try:
        return check_log_config(v)
    except ValueError as e:
        raise _Bad(f"{LOG_CONFIG_EXPECTED}; {e}") from None


@expects("a signal name like 'USR2' or 'SIGUSR2', or a signal number")
def signal_spec(v: Any) -> int:
    expected = "a signal name like 'USR2' or 'SIGUSR2', or a signal number"
    if isinstance(v, numbers.Integral) and not isinstance(v, bool):
        try:
            return int(signal.Signals(int(v)))
        except ValueError:
            raise _Bad(expected) from None
    if isinstance(v, str):
        name = v.upper()
        name = name if name.startswith("SIG") else "SIG" + name
        sig = getattr(signal.Signals, name, None)
        if sig is not None:
            return int(sig)
    raise _Bad(expected)


LOG_LEVELS = ("trace", "debug", "info", "warn", "error", "fatal")


@dataclass(frozen=True)
class Key:
    name: str
    default: Any
    check: Checker[Any]
    section: str
    doc: str
    reload: bool = False

    @property
    def expected(self) -> str:
        return self.check.expected


_TIMEOUT_DOC = "seconds; -1 means never"


def _kill_keys(prefix: str, who: str, section: str) -> List[Key]:
    return [
        Key(prefix + "heartbeat_interval", 1.0, number(positive=True), section,
            f"seconds between two heartbeats of the {who}", reload=True),
        Key(prefix + "heartbeat_timeout", 180, number(positive=True), section,
            f"a {who} silent this long is stopped immediately (QUIT, then KILL)", reload=True),
        Key(prefix + "graceful_kill_interval", 15, number(positive=True), section,
            "seconds between the first two TERMs of a graceful stop", reload=True),
        Key(prefix + "graceful_kill_interval_increment", 10, number(0), section,
            "added to the interval after each TERM", reload=True),
        Key(prefix + "graceful_kill_timeout", 600, number(0, never=True), section,
            "after this long a graceful stop turns immediate; " + _TIMEOUT_DOC, reload=True),
        Key(prefix + "immediate_kill_interval", 10, number(positive=True), section,
            "seconds between the first two QUITs of an immediate stop", reload=True),
        Key(prefix + "immediate_kill_interval_increment", 10, number(0), section,
            "added to the interval after each QUIT", reload=True),
        Key(prefix + "immediate_kill_timeout", 600, number(0, never=True), section,
            "after this long an immediate stop sends KILL; " + _TIMEOUT_DOC, reload=True),
    ]


_KEY_LIST: List[Key] = [
    # Daemon
    Key("daemonize", False, boolean, "Daemon", "detach from the terminal (double fork, setsid)"),
    Key("pid_path", None, path, "Daemon",
        "pid file: written atomically, refused while its process lives, removed on a clean exit"),
    Key("supervisor", False, boolean, "Daemon",
        "run the server in a child process that a supervisor monitors and restarts"),
    Key("daemon_process_name", None, text, "Daemon", "process title of the top process"),
    Key("chuser", None, user, "Daemon", "user to switch to before the server starts"),
    Key("chgroup", None, group, "Daemon", "group to switch to (set before the user)"),
    Key("chumask", None, umask, "Daemon", "umask to set"),
    Key("daemonize_error_exit_code", 1, integer(1, 255), "Daemon",
        "exit status of the launcher when a daemonized start fails"),
    # Supervisor
    Key("server_process_name", None, text, "Supervisor", "process title of the server process"),
    Key("restart_server_process", False, boolean, "Supervisor",
        "USR1/HUP restart the server process itself, not only its workers"),
    Key("enable_detach", True, boolean, "Supervisor", "INT starts a live restart (detach)"),
    Key("exit_on_detach", False, boolean, "Supervisor",
        "at INT the supervisor exits instead of starting a new server"),
    Key("disable_reload", False, boolean, "Supervisor",
        "USR2 does not reload the configuration (logs are still reopened)"),
    Key("server_restart_wait", 1.0, number(0), "Supervisor",
        "minimum seconds between two starts of the server process", reload=True),
    Key("server_detach_wait", 10.0, number(0), "Supervisor",
        "at a live restart, seconds to wait for the old server before starting a new one",
        reload=True),
    *_kill_keys("server_", "server process", "Supervisor"),
    # Workers
    Key("worker_type", "embedded", choice("embedded", "thread", "process", "spawn"), "Workers",
        "what runs the workers"),
    Key("workers", 1, integer(1), "Workers",
        "number of workers; a reload scales up (new slots) and down (stops the highest)",
        reload=True),
    Key("start_worker_delay", 0, number(0), "Workers",
        "seconds between two worker starts", reload=True),
    Key("start_worker_delay_rand", 0.2, number(0), "Workers",
        "random part of the delay: delay + random()*delay*rand - delay*rand/2", reload=True),
    Key("restart_backoff_base", 1.0, number(0), "Workers",
        "crash-loop backoff: a worker that dies unexpectedly is restarted at once; if it "
        "dies again, its slot waits this long, then twice as long each time; 0 = off",
        reload=True),
    Key("restart_backoff_max", 30, number(0), "Workers",
        "the backoff delay doubles up to this many seconds", reload=True),
    Key("restart_backoff_reset", 60, number(0), "Workers",
        "a worker that lived this long resets its slot's backoff", reload=True),
    Key("restart_max_count", 0, integer(0), "Workers",
        "restart intensity: after this many restarts of unexpectedly exited workers within "
        "restart_max_window seconds, the next one stops the server with exit code 75 "
        "(EX_TEMPFAIL) instead; 0 = no limit", reload=True),
    Key("restart_max_window", 60, number(positive=True), "Workers",
        "the window of restart_max_count, in seconds", reload=True),
    # Process workers
    Key("worker_process_name", None, process_name_format, "Process workers",
        "process title of each worker, a format with one %d or %s for the worker id",
        reload=True),
    *_kill_keys("worker_", "worker", "Process workers"),
    Key("worker_orphan_timeout", 10.0, number(0), "Process workers",
        "an orphaned worker (its server died) is killed this long after stop() if run() "
        "has not returned", reload=True),
    Key("worker_chuser", None, user, "Process workers", "user of the worker processes",
        reload=True),
    Key("worker_chgroup", None, group, "Process workers", "group of the worker processes",
        reload=True),
    Key("worker_chumask", None, umask, "Process workers", "umask of the worker processes",
        reload=True),
    Key("unrecoverable_exit_codes", [], exit_codes, "Process workers",
        "worker exit codes that are not restarted; the server exits with the code", reload=True),
    Key("stop_immediately_at_unrecoverable_exit", False, boolean, "Process workers",
        "stop the other workers at once after an unrecoverable exit", reload=True),
    Key("worker_reload_signal", None, signal_spec, "Process workers",
        "spawn workers: the signal a reload sends to each command (none by default)",
        reload=True),
    # Logger
    Key("log", None, log_destination, "Logger",
        "log file path; '-' is stdout; the default (none) is stderr", reload=True),
    Key("log_level", "debug", choice(*LOG_LEVELS, aliases={"warning": "warn", "critical": "fatal"}),
        "Logger", "lowest level written; trace is below debug", reload=True),
    Key("log_rotate_age", 5, integer(0), "Logger", "rotated generations kept (x.log.0 ...)"),
    Key("log_rotate_size", 1048576, integer(0), "Logger",
        "rotate the log file at this many bytes; 0 = never"),
    Key("log_stdout", True, boolean, "Logger", "fd 1 (print, C code, child programs) goes into the log"),
    Key("log_stderr", True, boolean, "Logger", "fd 2 goes into the log"),
    Key("logger_class", None, logger_class, "Logger", "the logging.Logger subclass to build"),
    Key("logger", None, logger_instance, "Logger", "a ready logger; pyse adds no handler to it"),
    Key("log_format", "serverengine", choice("serverengine", "json"), "Logger",
        "each line in ServerEngine's shape, or one JSON object per line", reload=True),
    Key("log_config", None, log_config, "Logger",
        "your Python logging configuration, applied at start before pyse's own handler; "
        "its levels win over log_level for the loggers it names"),
    # Other
    Key("disable_sigdump", False, boolean, "Other", "CONT does not write a sigdump file"),
    # Sockets (the socket manager: pyse.SocketManager.Server.from_config)
    Key("socket_manager", False, boolean, "Sockets",
        "pyse opens a socket manager in the top process (the supervisor, else the server), "
        "reached as server.socket_manager and pyse.SocketManager.Client(); its listeners "
        "outlive worker restarts, server restarts and live restarts"),
    Key("socket_reuseport", False, boolean, "Sockets",
        "set SO_REUSEPORT on the TCP and UDP sockets the socket manager binds"),
    Key("socket_backlog", 4096, integer(1), "Sockets",
        "listen() backlog of the TCP and unix sockets it binds (the kernel caps it at "
        "net.core.somaxconn)"),
    Key("socket_manager_dir", None, path, "Sockets",
        "directory in which the broker's private directory is made; default "
        "$XDG_RUNTIME_DIR, else the temp directory"),
    Key("socket_manager_timeout", 5.0, number(positive=True), "Sockets",
        "seconds a broker client has from connecting to the end of its reply"),
    Key("socket_activation", True, boolean, "Sockets",
        "adopt the sockets systemd passes (LISTEN_FDS) instead of binding new ones"),
]

KEYS: Mapping[str, Key] = {k.name: k for k in _KEY_LIST}


def _show(value: Any) -> str:
    text_ = repr(value)
    return text_ if len(text_) <= 80 else text_[:77] + "..."


def validate(raw: Any) -> dict[str, Any]:
    """Checks a configuration; returns a new dict with defaults filled in and
    values normalised.  Raises :class:`ConfigError` naming the first bad key,
    its value and what was expected.  Unknown keys are kept as they are."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"the configuration must be a dict (a mapping of key to value), "
                          f"got {type(raw).__name__}: {_show(raw)}", None, raw)
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if not isinstance(key, str):
            raise ConfigError(f"config key {_show(key)} is a {type(key).__name__}; "
                              f"keys must be strings", key, value)
        out[key] = value
    for spec in _KEY_LIST:
        value = out.get(spec.name)
        if value is None:
            default = spec.default
            out[spec.name] = list(default) if isinstance(default, list) else default
            continue
        try:
            out[spec.name] = spec.check(value)
        except _Bad as e:
            raise ConfigError(f"config key {spec.name!r}: got {_show(value)}, "
                              f"expected {e.expected}", spec.name, value) from None
    return out


def load(source: Any) -> dict[str, Any]:
    """Validates a dict, or calls a callable source and validates its result.
    Whatever else the callable raises becomes a :class:`ConfigError`, so a
    reload can keep the running configuration whatever went wrong; a
    ConfigError it raises passes through unchanged."""
    if source is None:
        return validate({})
    if callable(source) and not isinstance(source, Mapping):
        try:
            raw = source()
        except ConfigError:
            raise  # already says what is wrong, and where (a config file names itself)
        except Exception as e:
            raise ConfigError(f"the configuration callable {_callable_name(source)} raised "
                              f"{type(e).__name__}: {e}") from e
        return validate(raw)
    return validate(source)


def _callable_name(source: Any) -> str:
    return getattr(source, "__qualname__", None) or type(source).__name__


def near_misses(config: Mapping[str, Any]) -> List[Tuple[str, str]]:
    """(unknown key, likely known key) for each unknown key that looks like a
    typo of a known one (``worker`` → ``workers``, ``log_levle`` → ``log_level``)."""
    out = []
    for key in config:
        if not isinstance(key, str) or key in KEYS:
            continue
        likely = difflib.get_close_matches(key, KEYS.keys(), n=1, cutoff=0.8)
        if likely:
            out.append((key, likely[0]))
    return out


def restart_only_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> List[str]:
    """Known keys that changed between two validated configurations but that
    a reload does not put into effect: they need a restart."""
    return [k.name for k in _KEY_LIST
            if not k.reload and old.get(k.name, k.default) != new.get(k.name, k.default)]


def reference_markdown() -> str:
    """docs/configuration.md, from the same table the validator uses."""
    lines = [
        "# Configuration reference",
        "",
        "Generated from `pyse.config.KEYS` by `python -m pyse config-reference`; do not edit by hand",
        "(a test compares this file with the table).",
        "",
        "Every key is checked at `pyse.create()` and at every reload; a bad value raises",
        "`pyse.ConfigError` naming the key, the value and what was expected (at reload, the",
        "running configuration stays and the error is logged).  `None` means the default.",
        "Keys pyse does not know are kept for your code; one that looks like a typo of a",
        "known key is logged as a warning.  **reload** marks keys that USR2 puts into effect;",
        "a change to another key is logged as needing a restart.",
    ]
    section = None
    for k in _KEY_LIST:
        if k.section != section:
            section = k.section
            lines += ["", f"## {section}", "",
                      "| key | default | expected | reload | meaning |",
                      "|---|---|---|---|---|"]
        default = "none" if k.default is None else f"`{k.default!r}`"
        expected = k.expected.replace("|", "\\|")
        lines.append(f"| `{k.name}` | {default} | {expected} | {'reload' if k.reload else ''} "
                     f"| {k.doc} |")
    return "\n".join(lines) + "\n"
