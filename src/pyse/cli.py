"""The ``pyse`` command: run a worker class from an import path, or control
a running daemon through its pid file.  ``docs/cli.md`` is the reference.

    pyse run myapp.workers:MyWorker -c server.toml -w 4 -k process -D -p app.pid
    pyse run myapp.workers:MyWorker -c server.toml --check-config | --print-config
    pyse stop|restart|reload|detach|dump -p app.pid [--immediate] [--wait [--timeout S]]
    pyse status -p app.pid
    pyse config-reference

An error is one line on stderr, ``pyse: ...``, and a non-zero exit status;
never a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from typing import Any, Callable, Dict, List, Optional, Sequence

import pyse
from pyse import config as config_mod
from pyse.cli_config import (ENV_VAR, LayeredConfig, OptionParser, UsageError, add_config_options,
                             check_config, print_config)
from pyse.cli_control import ControlError, add_control_parsers
from pyse.config_file import format_names

#: exit status when the command line, the configuration or the user's
#: classes are wrong and nothing was started
EXIT_USAGE = 2
#: exit status of a ``pyse run`` whose server raised (not a daemonized start)
EXIT_SERVER_FAILED = 1
EXIT_INTERRUPTED = 130


class CommandError(Exception):
    pass


def version_line() -> str:
    return f"pyse {pyse.__version__}"


# -- importing the user's classes ------------------------------------------------

def import_object(path: str, what: str) -> Any:
    """The object at 'package.module:Name' (Name may be dotted); CommandError
    for a malformed path, a module that cannot be imported (whatever its
    import raises) or a missing attribute."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise CommandError(f"{what} {path!r}: expected package.module:ClassName")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is not None and (module_name + ".").startswith(e.name + "."):
            raise CommandError(f"{what} {path!r}: no module named {e.name!r} "
                               f"(looked in the current directory and sys.path)") from None
        raise CommandError(f"{what} {path!r}: importing {module_name!r} failed: "
                           f"{describe_exception(e)}") from None
    except Exception as e:
        raise CommandError(f"{what} {path!r}: importing {module_name!r} failed: "
                           f"{describe_exception(e)}") from None
    obj = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise CommandError(f"{what} {path!r}: {module_name!r} has no attribute "
                               f"{attr!r}") from None
    return obj


def import_class(path: str, what: str) -> type:
    cls = import_object(path, what)
    if not isinstance(cls, type):
        raise CommandError(f"{what} {path!r}: expected a class, got {type(cls).__name__} "
                           f"{cls!r:.40}")
    return cls


def describe_exception(error: BaseException) -> str:
    """'Type: message (file, line N)' with the innermost frame: one line."""
    text = f"{type(error).__name__}: {error}"
    if isinstance(error, SyntaxError):
        return text  # its message already says "(file, line N)"
    frames = traceback.extract_tb(error.__traceback__)
    if frames:
        text += f" ({frames[-1].filename}, line {frames[-1].lineno})"
    return text


# -- pyse run -------------------------------------------------------------------------

def cmd_run(args: argparse.Namespace) -> int:
    # As `python -m` does: the project's own modules import, from WORKER,
    # --server and a .py config file alike.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    layered = LayeredConfig.from_options(args, os.environ)
    if args.check_config:
        return check_config(layered, lambda config: app_problems(args, config))
    if args.print_config:
        return print_config(layered)
    if not args.worker:
        raise UsageError("pyse run", "the worker class (package.module:ClassName) is required")
    worker = import_class(args.worker, "worker")
    server = import_class(args.server, "server") if args.server else None
    try:
        daemon = pyse.create(server, worker, layered)
    except TypeError as e:  # a worker that is not a class, or has no run()
        raise CommandError(str(e)) from e
    try:
        status = daemon.main()
        failure = getattr(daemon.server, "start_failure", None)
        if failure and not daemon.config["daemonize"]:
            print(f"pyse: cannot start: {failure}", file=sys.stderr)
        return status
    except Exception as e:
        # A user hook (initialize, before_run...) that raised in the
        # foreground: one line naming the exception and where it was raised.
        print(f"pyse: the server failed: {describe_exception(e)}", file=sys.stderr)
        return EXIT_SERVER_FAILED


def app_problems(args: argparse.Namespace, config: Dict[str, Any]) -> List[str]:
    """--check-config: the worker and server classes, if given, import and
    fit the configuration."""
    if not args.worker:
        return []
    try:
        worker = import_class(args.worker, "worker")
        server = import_class(args.server, "server") if args.server else None
        pyse.create(server, worker, config)
    except (CommandError, TypeError, config_mod.ConfigError) as e:
        return [str(e)]
    return []


RUN_EPILOG = f"""\
configuration, lowest to highest precedence:
  pyse's defaults < the config file (-c) < {ENV_VAR} < the command line's flags < --set

  {ENV_VAR} holds options of 'pyse run' (-c, -w, -k, -D, -p, --log-file,
  --log-level, --log-format, --log-config, --set), split as a shell would; e.g.
  {ENV_VAR}="-w 4 --set log_rotate_age=10".
  Config file formats, by extension: {format_names()} (.yaml needs PyYAML;
  a .py file's module-level names become keys).

every configuration key, its default and meaning: docs/configuration.md,
or 'pyse config-reference'.  This command: docs/cli.md.

exit status: the server's (0 after a clean stop; with -D, 0 once the daemon
is up, else daemonize_error_exit_code, 1 by default); 1 if the server raised;
2 if the command line, the configuration or the classes are wrong (nothing
started); --check-config and --print-config: 0 valid, 1 not.
"""


def add_run_parser(sub: "argparse._SubParsersAction[Any]") -> None:
    run = sub.add_parser("run", help="run a worker class as a server",
                         description="Runs WORKER (a class, as package.module:ClassName) "
                                     "under pyse: a server and its workers,\nin the "
                                     "foreground or (-D) as a daemon.",
                         epilog=RUN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("worker", nargs="?", metavar="WORKER",
                     help="the worker class, as package.module:ClassName, imported with the "
                          "current directory first on sys.path (optional with --check-config "
                          "and --print-config)")
    run.add_argument("--server", metavar="CLASS",
                     help="a server class (package.module:ClassName) whose hooks run in the "
                          "server (default: none)")
    add_config_options(run)
    mode = run.add_mutually_exclusive_group()
    mode.add_argument("--check-config", action="store_true",
                      help="load and validate the configuration (and import WORKER and "
                           "--server if given), print every problem, exit 0 if valid, else 1; "
                           "starts nothing")
    mode.add_argument("--print-config", action="store_true",
                      help="print every key's effective value and where it came from "
                           "(default, the config file, PYSE_CMD_ARGS, a flag, --set); exit 1 "
                           "if the configuration is not valid; starts nothing")
    run.add_argument("--version", action="version", version=version_line(),
                     help="print pyse's version and exit")
    run.set_defaults(func=cmd_run)


# -- the rest ---------------------------------------------------------------------------

def cmd_config_reference(args: argparse.Namespace) -> int:
    sys.stdout.write(config_mod.reference_markdown())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = OptionParser(prog="pyse", allow_abbrev=False,
                          description="Run and control pyse servers.",
                          epilog="'pyse COMMAND --help' describes each command; docs/cli.md is "
                                 "the reference.")
    parser.add_argument("--version", action="version", version=version_line(),
                        help="print pyse's version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                help="what to do; 'pyse COMMAND --help' tells more")
    add_run_parser(sub)
    add_control_parsers(sub)
    reference = sub.add_parser("config-reference",
                               help="print the configuration reference (docs/configuration.md)",
                               description="Prints the configuration reference, in Markdown: "
                                           "every key, its default, what it expects, whether a "
                                           "reload applies it.")
    reference.set_defaults(func=cmd_config_reference)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The ``pyse`` command; returns its exit status."""
    try:
        args = build_parser().parse_args(argv)
        command: Callable[[argparse.Namespace], int] = args.func
        return command(args)
    except UsageError as e:
        print(f"pyse: {e} (see '{e.prog} --help')", file=sys.stderr)
        return EXIT_USAGE
    except (CommandError, ControlError, config_mod.ConfigError) as e:
        print(f"pyse: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("pyse: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
