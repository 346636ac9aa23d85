"""``pyse run``'s configuration: config file formats, PYSE_CMD_ARGS, the
precedence of the layers, --check-config and --print-config, and keys pyse
does not know.  Nothing here starts a server."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from pyse.config import KEYS
from pyse.config_equivalents import EQUIVALENTS
from test_cli import APP, assert_one_line_error, pyse_command, write

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    write(tmp_path, "app.py", APP)
    return tmp_path


def printed_config(result) -> dict[str, tuple[str, str]]:
    """--print-config's table as key -> (value, source)."""
    assert result.returncode == 0, result.stderr
    rows = {}
    header, *lines = result.stdout.splitlines()
    assert header.split() == ["key", "value", "source"]
    # Aligned columns: a value may hold spaces.
    value_at, source_at = header.index("value"), header.index("source")
    for line in lines:
        rows[line[:value_at].strip()] = (line[value_at:source_at].strip(), line[source_at:])
    return rows


# -- formats -----------------------------------------------------------------------

FORMATS = {
    "s.toml": 'workers = 3\nworker_type = "thread"\nmessage = "from toml"\n',
    "s.json": '{"workers": 3, "worker_type": "thread", "message": "from json"}',
    "s.py": """
        import os
        from pathlib import Path

        _base = 1
        workers = _base + 2
        worker_type = "thread"
        message = "from py"

        def helper():
            return 0
    """,
}


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_the_extension_picks_the_format(app_dir, name):
    path = write(app_dir, name, FORMATS[name])
    rows = printed_config(pyse_command("run", "-c", name, "--print-config", cwd=app_dir))
    source = f"config file '{path}'"
    assert rows["workers"] == ("3", source)
    assert rows["worker_type"] == ('"thread"', source)
    assert rows["message"][0] == f'"from {Path(name).suffix[1:]}"'
    assert rows["log_level"] == ('"debug"', "default")
    # A .py file's imports, functions and _private names are not keys.
    assert not {"os", "Path", "helper", "_base"} & set(rows)


@pytest.mark.skipif(importlib.util.find_spec("yaml") is None, reason="PyYAML is not installed")
@pytest.mark.parametrize("name", ["s.yaml", "s.YML"])
def test_yaml_when_pyyaml_is_installed(app_dir, name):
    path = write(app_dir, name, "workers: 3\nworker_type: thread\nmessage: from yaml\n")
    rows = printed_config(pyse_command("run", "-c", name, "--print-config", cwd=app_dir))
    assert rows["workers"] == ("3", f"config file '{path}'")
    assert rows["message"][0] == '"from yaml"'
    write(app_dir, "bad.yaml", "workers: [1,\n")
    assert_one_line_error(pyse_command("run", "app:W", "-c", "bad.yaml", cwd=app_dir),
                          "bad.yaml'", "not valid YAML", "line 2")


def test_yaml_without_pyyaml_is_a_clear_error(app_dir):
    # A yaml package that fails to import stands for PyYAML not installed.
    hidden = app_dir / "hide" / "yaml"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError('not installed')\n")
    write(app_dir, "s.yaml", "workers: 3\n")
    result = pyse_command("run", "app:W", "-c", "s.yaml", cwd=app_dir,
                          env={"PYTHONPATH": str(app_dir / "hide")})
    assert_one_line_error(result, "s.yaml'", "reading YAML needs PyYAML", "pip install PyYAML")


def test_another_extension_is_an_error_listing_the_formats(app_dir):
    write(app_dir, "s.ini", "[server]\nworkers = 3\n")
    assert_one_line_error(pyse_command("run", "app:W", "-c", "s.ini", cwd=app_dir),
                          "s.ini'", "unknown format '.ini'", ".toml, .json, .yaml, .yml, .py")


@pytest.mark.parametrize("name, text, fragments", [
    ("s.json", "workers = 3", ["not valid JSON"]),
    ("s.json", "[1, 2]", ["expected a mapping of keys to values at the top, got list"]),
    ("s.toml", "workers = ", ["not valid TOML"]),
    ("s.py", "workers = (", ["not valid Python", "line 1"]),
    ("s.py", "workers = 2\nlog = undefined_name\n", ["running it raised NameError", "line 2"]),
    ("s.py", "__all__ = ['workers']\n", ["__all__ lists 'workers', which the file does not set"]),
])
def test_a_bad_file_names_itself(app_dir, name, text, fragments):
    path = write(app_dir, name, text)
    assert_one_line_error(pyse_command("run", "app:W", "-c", name, cwd=app_dir),
                          f"config file '{path}'", *fragments)


def test_a_python_file_with_all_sets_exactly_those_names_and_may_set_classes(app_dir):
    write(app_dir, "s.py", """
        import logging

        class QuietLogger(logging.Logger):
            pass

        logger_class = QuietLogger
        workers = 2
        helper_value = 5
        __all__ = ["workers", "logger_class"]
    """)
    rows = printed_config(pyse_command("run", "-c", "s.py", "--print-config", cwd=app_dir))
    assert rows["workers"][0] == "2"
    assert "QuietLogger" in rows["logger_class"][0]
    assert "helper_value" not in rows


def test_a_python_file_imports_the_projects_own_modules(app_dir):
    write(app_dir, "base_settings.py", "WORKERS = 6\n")
    write(app_dir, "s.py", "from base_settings import WORKERS\nworkers = WORKERS\n")
    rows = printed_config(pyse_command("run", "-c", "s.py", "--print-config", cwd=app_dir))
    assert rows["workers"][0] == "6"
    assert "WORKERS" in rows  # a plain value: it counts, as any public name


# -- layers and PYSE_CMD_ARGS ------------------------------------------------------------

def test_precedence_defaults_file_environment_flags_set(app_dir):
    path = write(app_dir, "s.toml", """
        workers = 2
        log_level = "info"
        log_rotate_age = 3
        daemonize = false
        message = "file"
    """)
    env = {"PYSE_CMD_ARGS": "-w 3 --log-level error -D --set message=env --set log_rotate_age=4"}
    rows = printed_config(pyse_command(
        "run", "-c", "s.toml", "-w", "4", "--set", "log_rotate_age=7", "--print-config",
        cwd=app_dir, env=env))
    file_source = f"config file '{path}'"
    assert rows["log_stdout"] == ("true", "default")
    assert rows["workers"] == ("4", "command line --workers")
    assert rows["log_level"] == ('"error"', "PYSE_CMD_ARGS --log-level")
    assert rows["daemonize"] == ("true", "PYSE_CMD_ARGS --daemon")
    assert rows["log_rotate_age"] == ("7", "command line --set")
    assert rows["message"] == ('"env"', "PYSE_CMD_ARGS --set (not a pyse key)")
    assert rows["log_rotate_size"] == ("1048576", "default")
    # --set wins over a named flag of the same command line.
    rows = printed_config(pyse_command("run", "-c", "s.toml", "-w", "4", "--set", "workers=5",
                                       "--print-config", cwd=app_dir))
    assert rows["workers"] == ("5", "command line --set")
    assert rows["log_level"] == ('"info"', file_source)
    rows = printed_config(pyse_command("run", "--no-daemon", "--print-config", cwd=app_dir,
                                       env={"PYSE_CMD_ARGS": "-D"}))
    assert rows["daemonize"] == ("false", "command line --no-daemon")


def test_environment_may_name_the_file_and_the_command_line_overrides_it(app_dir):
    env_file = write(app_dir, "env.json", '{"workers": 2}')
    cli_file = write(app_dir, "cli.json", '{"workers": 3}')
    env = {"PYSE_CMD_ARGS": "-c env.json --pid-file 'my app.pid'"}
    rows = printed_config(pyse_command("run", "--print-config", cwd=app_dir, env=env))
    assert rows["workers"] == ("2", f"config file '{env_file}'")
    assert rows["pid_path"] == ('"my app.pid"', "PYSE_CMD_ARGS --pid-file")
    rows = printed_config(pyse_command("run", "-c", "cli.json", "--print-config", cwd=app_dir,
                                       env=env))
    assert rows["workers"] == ("3", f"config file '{cli_file}'")


@pytest.mark.parametrize("value, fragment", [
    ("--workers", "PYSE_CMD_ARGS: argument -w/--workers: expected one argument"),
    ("app:W", "PYSE_CMD_ARGS: unrecognized arguments: app:W"),
    ("--set 'unclosed", "PYSE_CMD_ARGS: cannot split it as a shell would"),
    ("-w 0", "PYSE_CMD_ARGS --workers: config key 'workers': got 0"),
])
def test_a_bad_environment_variable_is_named(app_dir, value, fragment):
    result = pyse_command("run", "app:W", cwd=app_dir, env={"PYSE_CMD_ARGS": value})
    assert_one_line_error(result, fragment)


# -- --check-config and --print-config -------------------------------------------------

def test_check_config_accepts_a_valid_configuration(app_dir):
    write(app_dir, "s.toml", 'workers = 2\nworker_type = "process"\n')
    result = pyse_command("run", "app:W", "-c", "s.toml", "--check-config", cwd=app_dir)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "configuration OK"
    assert result.stderr == ""


def test_check_config_lists_every_problem_not_only_the_first(app_dir):
    path = write(app_dir, "s.json", '{"workers": 0, "log_rotate_age": -1, "chumask": "999"}')
    result = pyse_command("run", "app:W", "-c", "s.json", "-k", "gevent", "--set", "broken",
                          "--check-config", cwd=app_dir,
                          env={"PYSE_CMD_ARGS": "--log-level loud"})
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("pyse: error: ")]
    expected = [f"config file '{path}': config key 'workers'",
                f"config file '{path}': config key 'log_rotate_age'",
                f"config file '{path}': config key 'chumask'",
                "command line --worker-type: config key 'worker_type'",
                "command line --set 'broken': expected KEY=VALUE",
                "PYSE_CMD_ARGS --log-level: config key 'log_level'"]
    for fragment in expected:
        assert any(fragment in line for line in errors), (fragment, errors)
    assert len(errors) == len(expected)
    assert "not valid (6 problems)" in result.stderr.splitlines()[-1]


def test_check_config_imports_the_worker_and_checks_it_fits(app_dir):
    result = pyse_command("run", "app:NoRun", "--check-config", cwd=app_dir)
    assert result.returncode == 1
    assert "has no run() method" in result.stderr
    result = pyse_command("run", "app:Missing", "--check-config", cwd=app_dir)
    assert result.returncode == 1
    assert "'app' has no attribute 'Missing'" in result.stderr


def test_check_config_notes_unknown_keys_without_failing(app_dir):
    path = write(app_dir, "s.toml", 'graceful_timeout = 30\nmessage = "hi"\nworker = 2\n')
    result = pyse_command("run", "app:W", "-c", "s.toml", "--set", "pidfile=x.pid",
                          "--check-config", cwd=app_dir)
    assert result.returncode == 0, result.stderr
    notes = result.stderr.splitlines()
    assert (f"pyse: note: config file '{path}': Unknown config key 'graceful_timeout': it is "
            f"gunicorn's name for pyse's 'worker_graceful_kill_timeout'") in "\n".join(notes)
    assert any("'message' is not a pyse key; it is kept for your code" in n for n in notes)
    assert any("'worker': did you mean 'workers'?" in n for n in notes)
    assert any(n.startswith("pyse: note: command line --set:") and "'pid_path'" in n
               for n in notes)
    assert len(notes) == 4


def test_print_config_shows_normalised_values(app_dir):
    write(app_dir, "s.json", '{"chumask": "027", "worker_reload_signal": "hup", '
                             '"log_level": "WARNING", "unrecoverable_exit_codes": [3]}')
    rows = printed_config(pyse_command("run", "-c", "s.json", "--print-config", cwd=app_dir))
    assert rows["chumask"][0] == '"027"'
    assert rows["worker_reload_signal"][0] == '"SIGHUP"'
    assert rows["log_level"][0] == '"warn"'
    assert rows["unrecoverable_exit_codes"][0] == "[3]"
    assert set(KEYS) <= set(rows)


def test_print_config_of_an_invalid_configuration_exits_1(app_dir):
    result = pyse_command("run", "--print-config", "-w", "zero", cwd=app_dir)
    assert result.returncode == 1
    assert result.stdout == ""
    assert "pyse: error: command line --workers: config key 'workers': got 'zero'" in result.stderr


def test_check_and_print_exclude_each_other(app_dir):
    assert_one_line_error(pyse_command("run", "--check-config", "--print-config", cwd=app_dir),
                          "not allowed with argument")


# -- the table of other tools' names ----------------------------------------------------

def test_every_equivalent_names_existing_pyse_keys_and_is_not_one():
    for name, equivalent in EQUIVALENTS.items():
        assert name not in KEYS, name
        assert equivalent.keys and set(equivalent.keys) <= set(KEYS), name


def test_the_cli_reference_lists_every_equivalent_and_every_option():
    from pyse.cli import build_parser

    text = (Path(__file__).parent.parent / "docs" / "cli.md").read_text()
    for name, equivalent in EQUIVALENTS.items():
        row = f"| `{name}` | {equivalent.tools.replace(' and ', ', ')} |"
        assert row in text, row
    parser = build_parser()
    commands = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, command in commands.choices.items():
        assert f"`{name}" in text, name
        for action in command._actions:
            for option in action.option_strings:
                assert option in text, (name, option)


def test_log_format_and_log_config_flags(app_dir):
    """--log-config FILE and --log-format FORMAT set log_config and
    log_format, and a run writes what they ask for."""
    write(app_dir, "logging.json", '{"version": 1, "loggers": {"quiet.lib": {"level": "ERROR"}}}')
    printed = pyse_command("run", "app:W", "--log-config", "logging.json", "--log-format",
                           "json", "--print-config", cwd=app_dir)
    assert printed.returncode == 0, printed.stderr
    lines = {line.split()[0]: line for line in printed.stdout.splitlines() if line}
    assert '"logging.json"' in lines["log_config"] and "--log-config" in lines["log_config"]
    assert '"json"' in lines["log_format"] and "--log-format" in lines["log_format"]
    bad = pyse_command("run", "app:W", "--log-format", "xml", "--check-config", cwd=app_dir)
    assert bad.returncode == 1
    assert "config key 'log_format': got 'xml', expected one of 'serverengine', 'json'" in \
        bad.stderr
