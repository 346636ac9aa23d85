"""The ``pyse`` command: run a worker class from an import path, or control
a running daemon through its pid file.

    pyse run myapp.workers:MyWorker --config server.json [--server myapp:MyServer]
             [--set workers=4 --set worker_type=process]
    pyse stop|restart|reload|detach|dump --pid-file server.pid [--immediate]
    pyse status --pid-file server.pid
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import sys
from typing import Any, Callable, Optional, Sequence

from pyse import config as config_mod
from pyse.signals import (DETACH, DUMP, GRACEFUL_RESTART, GRACEFUL_STOP, IMMEDIATE_RESTART,
                          IMMEDIATE_STOP, RELOAD)

#: command -> (graceful signal, immediate signal)
CONTROL_SIGNALS = {
    "stop": (GRACEFUL_STOP, IMMEDIATE_STOP),
    "restart": (GRACEFUL_RESTART, IMMEDIATE_RESTART),
    "reload": (RELOAD, RELOAD),
    "detach": (DETACH, DETACH),
    "dump": (DUMP, DUMP),
}


class CommandError(Exception):
    pass


def import_object(path: str, what: str) -> Any:
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise CommandError(f"{what} {path!r}: expected 'package.module:ClassName'")
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise CommandError(f"{what} {path!r}: cannot import {module_name!r}: {e}") from e
    try:
        obj = module
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError:
        raise CommandError(f"{what} {path!r}: {module_name!r} has no attribute {attr!r}") from None
    return obj


def parse_value(text: str) -> Any:
    """--set values are JSON when they parse as JSON (4, true, [1, 2]), else strings."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def read_config_file(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise config_mod.ConfigError(f"config file {path!r}: {e.strerror}") from e
    if path.endswith(".toml"):
        try:
            import tomllib
        except ImportError:  # Python 3.10
            raise config_mod.ConfigError(f"config file {path!r}: TOML needs Python 3.11") from None
        try:
            data = tomllib.loads(raw.decode())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise config_mod.ConfigError(f"config file {path!r}: {e}") from e
    else:
        try:
            data = json.loads(raw)
        except ValueError as e:
            raise config_mod.ConfigError(f"config file {path!r}: not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise config_mod.ConfigError(f"config file {path!r}: expected an object at the top")
    return data


def config_source(path: Optional[str], overrides: Sequence[str]) -> Callable[[], dict]:
    """A callable source, so that every reload re-reads the file."""
    pairs = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CommandError(f"--set {item!r}: expected key=value")
        pairs.append((key, parse_value(value)))

    def load() -> dict:
        data = read_config_file(path) if path else {}
        data.update(pairs)
        return data

    return load


def cmd_run(args: argparse.Namespace) -> int:
    import pyse

    worker = import_object(args.worker, "worker")
    server = import_object(args.server, "server") if args.server else None
    try:
        daemon = pyse.create(server, worker, config_source(args.config, args.set))
    except TypeError as e:  # a worker class without run(): the user's mistake
        raise CommandError(str(e)) from e
    return daemon.main()


def read_pid(pid_file: str) -> int:
    try:
        with open(pid_file) as f:
            text = f.read().strip()
    except OSError as e:
        raise CommandError(f"pid file {pid_file!r}: {e.strerror}") from e
    try:
        return int(text)
    except ValueError:
        raise CommandError(f"pid file {pid_file!r}: does not hold a pid ({text[:40]!r})") from None


def cmd_control(args: argparse.Namespace) -> int:
    from pyse import pidfile

    pid = read_pid(args.pid_file)
    # The daemon holds the pid file's lock while it runs: without it, pid
    # may by now belong to an unrelated process (see pyse.pidfile).
    if not pidfile.is_locked(args.pid_file):
        raise CommandError(f"pid file {args.pid_file!r} is stale: pid {pid} is not a running "
                           f"pyse daemon (nothing holds the file's lock)")
    graceful, immediate = CONTROL_SIGNALS[args.command]
    signo = immediate if getattr(args, "immediate", False) else graceful
    try:
        os.kill(pid, signo)
    except ProcessLookupError:
        raise CommandError(f"pid {pid} from {args.pid_file!r} is not running") from None
    print(f"sent {signal.Signals(signo).name} to {pid}")
    return 0


def process_tree(pid: int, depth: int = 0) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            title = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = [int(p) for p in f.read().split()]
    except FileNotFoundError:
        return []
    lines = [f"{'  ' * depth}{pid} {title}"]
    for child in children:
        lines.extend(process_tree(child, depth + 1))
    return lines


def cmd_status(args: argparse.Namespace) -> int:
    pid = read_pid(args.pid_file)
    lines = process_tree(pid)
    if not lines:
        print(f"not running (pid file {args.pid_file!r} names {pid})")
        return 1
    print("\n".join(lines))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyse", description="Run and control pyse servers.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a worker class")
    run.add_argument("worker", help="the worker class, as package.module:ClassName")
    run.add_argument("--server", help="a server module class, as package.module:ClassName")
    run.add_argument("--config", "-c", help="a JSON (or, on 3.11+, TOML) config file, "
                                            "re-read at every reload")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="a config value (JSON, or a string), over the file's")
    run.set_defaults(func=cmd_run)
    for name in CONTROL_SIGNALS:
        p = sub.add_parser(name, help=f"send the {name} signal to a running daemon")
        p.add_argument("--pid-file", "-p", required=True)
        if name in ("stop", "restart"):
            p.add_argument("--immediate", action="store_true", help="QUIT/HUP instead of TERM/USR1")
        p.set_defaults(func=cmd_control)
    status = sub.add_parser("status", help="show the running process tree")
    status.add_argument("--pid-file", "-p", required=True)
    status.set_defaults(func=cmd_status)
    reference = sub.add_parser("config-reference",
                               help="print the configuration reference (docs/configuration.md)")
    reference.set_defaults(func=cmd_config_reference)
    return parser


def cmd_config_reference(args: argparse.Namespace) -> int:
    sys.stdout.write(config_mod.reference_markdown())
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CommandError, config_mod.ConfigError) as e:
        print(f"pyse: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
