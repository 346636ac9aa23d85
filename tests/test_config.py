"""The configuration table, its validator and reload rules (issue 4)."""
from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyse import config as config_mod
from pyse.config import KEYS, ConfigError
from pyse.server import Server
from pyse.worker import Worker

ROOT = Path(__file__).resolve().parent.parent

# key -> (a bad value, words the message must contain about what was expected)
BAD_VALUES: dict[str, tuple[object, str]] = {
    "daemonize": ("yes", "true or false"),
    "pid_path": ("", "file path"),
    "supervisor": (1, "true or false"),
    "daemon_process_name": (42, "non-empty string"),
    "chuser": ("no-such-user-pyse-test", "existing user"),
    "chgroup": ("no-such-group-pyse-test", "existing group"),
    "chumask": ("0999", "umask"),
    "daemonize_error_exit_code": (0, "integer from 1 to 255"),
    "server_process_name": ("", "non-empty string"),
    "restart_server_process": ("false", "true or false"),
    "enable_detach": (0, "true or false"),
    "exit_on_detach": ([], "true or false"),
    "disable_reload": ("no", "true or false"),
    "server_restart_wait": (-1, "number >= 0"),
    "server_detach_wait": ("10", "number >= 0"),
    "server_heartbeat_interval": (0, "greater than 0"),
    "server_heartbeat_timeout": (-5, "greater than 0"),
    "server_graceful_kill_interval": (float("nan"), "greater than 0"),
    "server_graceful_kill_interval_increment": (-0.5, "number >= 0"),
    "server_graceful_kill_timeout": (-2, "-1 for never"),
    "server_immediate_kill_interval": (True, "greater than 0"),
    "server_immediate_kill_interval_increment": (float("inf"), "number >= 0"),
    "server_immediate_kill_timeout": (-1.5, "-1 for never"),
    "worker_type": ("fork", "'embedded', 'thread', 'process', 'spawn'"),
    "workers": (0, "integer >= 1"),
    "start_worker_delay": (-0.1, "number >= 0"),
    "start_worker_delay_rand": ("0.2", "number >= 0"),
    "restart_backoff_base": (-1, "number >= 0"),
    "restart_backoff_max": ([30], "number >= 0"),
    "restart_backoff_reset": (float("-inf"), "number >= 0"),
    "restart_max_count": (-1, "an integer >= 0"),
    "restart_max_window": (0, "a number of seconds greater than 0"),
    "worker_process_name": ("w-%d-%d", "at most one %d or %s"),
    "worker_heartbeat_interval": (0.0, "greater than 0"),
    "worker_heartbeat_timeout": ("180", "greater than 0"),
    "worker_graceful_kill_interval": (-15, "greater than 0"),
    "worker_graceful_kill_interval_increment": (-10, "number >= 0"),
    "worker_graceful_kill_timeout": (-3, "-1 for never"),
    "worker_immediate_kill_interval": (0, "greater than 0"),
    "worker_immediate_kill_interval_increment": ("ten", "number >= 0"),
    "worker_immediate_kill_timeout": ("never", "-1 for never"),
    "worker_orphan_timeout": (-10, "number >= 0"),
    "worker_chuser": (-1, "existing user"),
    "worker_chgroup": (-7, "existing group"),
    "worker_chumask": (0o1000, "umask"),
    "unrecoverable_exit_codes": ([1, 256], "exit codes (integers from 0 to 255)"),
    "stop_immediately_at_unrecoverable_exit": ("true", "true or false"),
    "worker_reload_signal": ("SIGNOPE", "signal name"),
    "log": ("", "file path"),
    "log_level": ("verbose", "'trace', 'debug', 'info', 'warn', 'error', 'fatal'"),
    "log_rotate_age": (-1, "integer >= 0"),
    "log_rotate_size": (1.5, "integer >= 0"),
    "log_stdout": ("1", "true or false"),
    "log_stderr": ("on", "true or false"),
    "logger_class": (dict, "subclass of logging.Logger"),
    "logger": ("root", "logging.Logger instance"),
    "log_format": ("logfmt", "'serverengine', 'json'"),
    "log_config": ({"handler": {}}, "unknown section(s) 'handler'"),
    "disable_sigdump": (2, "true or false"),
    "socket_manager": ("on", "true or false"),
    "socket_reuseport": ("yes", "true or false"),
    "socket_backlog": (0, "integer >= 1"),
    "socket_manager_dir": ("", "file path"),
    "socket_manager_timeout": (0, "greater than 0"),
    "socket_activation": (1, "true or false"),
}


def test_every_key_has_a_bad_value_row():
    missing = sorted(set(KEYS) - set(BAD_VALUES))
    stale = sorted(set(BAD_VALUES) - set(KEYS))
    assert not missing, f"config keys without a bad-value row in BAD_VALUES: {missing}"
    assert not stale, f"rows for keys config.KEYS no longer has: {stale}"


@pytest.mark.parametrize("key", sorted(BAD_VALUES))
def test_bad_value_names_key_value_and_expectation(key):
    value, expected = BAD_VALUES[key]
    with pytest.raises(ConfigError) as info:
        config_mod.validate({key: value})
    message = str(info.value)
    assert repr(key) in message
    assert repr(value)[:60] in message, f"the value is not named: {message}"
    assert expected in message, f"what was expected is not said: {message}"
    assert info.value.key == key
    assert info.value is not None and isinstance(info.value, ValueError)


@pytest.mark.parametrize("key", sorted(KEYS))
def test_defaults_validate_and_none_means_default(key):
    checked = config_mod.validate({key: None})
    default = KEYS[key].default
    assert checked[key] == default
    if default is not None:
        assert config_mod.validate({key: default})[key] == default


def test_good_values_are_normalised():
    c = config_mod.validate({"log_level": "WARNING", "chumask": "022", "worker_reload_signal": "usr2",
                             "unrecoverable_exit_codes": (3, 4), "mine": object})
    assert c["log_level"] == "warn"
    assert c["chumask"] == 0o22
    assert c["worker_reload_signal"] == 12
    assert c["unrecoverable_exit_codes"] == [3, 4]
    assert c["mine"] is object, "unknown keys are kept for user code"


def test_not_a_mapping_and_non_string_keys():
    with pytest.raises(ConfigError, match="must be a dict"):
        config_mod.validate([("workers", 2)])
    with pytest.raises(ConfigError, match="keys must be strings"):
        config_mod.validate({3: "x"})


# -- hypothesis: nothing but ConfigError ----------------------------------------
class Weird:
    """An object no checker expects."""

    def __repr__(self) -> str:
        return "<weird>"


scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12)
           | st.binary(max_size=8) | st.sampled_from([Weird(), logging.Logger, logging.getLogger("x"),
                                                     dict, 0o777, -1, "0o22", "%d", "%", "SIGTERM"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.tuples(inner, inner) | st.dictionaries(st.text(max_size=4), inner,
                                                                    max_size=3), max_leaves=6)
keys = st.sampled_from(sorted(KEYS)) | st.text(max_size=16) | st.integers() | st.none()


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(keys, values, max_size=8) | values)
def test_random_configs_raise_only_config_error(raw):
    try:
        out = config_mod.validate(raw)
    except ConfigError:
        return
    for name, spec in KEYS.items():
        assert name in out
        if out[name] is not None:
            assert spec.check(out[name]) == out[name] or out[name] != out[name]


@settings(max_examples=100, deadline=None)
@given(values, st.booleans())
def test_a_callable_source_raising_or_returning_anything_gives_config_error(value, raises):
    """Whatever a config callable does, load() gives what validate() gives
    for its result, or a ConfigError that says what went wrong."""
    def source():
        if raises:
            raise RuntimeError("broken config file")
        return value
    if raises:
        with pytest.raises(ConfigError, match="raised RuntimeError: broken config file"):
            config_mod.load(source)
        return
    try:
        expected = config_mod.validate(value)
    except ConfigError as e:
        with pytest.raises(ConfigError) as info:
            config_mod.load(source)
        assert str(info.value) == str(e)
        return
    assert config_mod.load(source) == expected


# -- the reference in docs/ ------------------------------------------------------
def test_docs_configuration_md_is_the_generated_reference():
    generated = subprocess.run([sys.executable, "-m", "pyse", "config-reference"],
                               capture_output=True, text=True, check=True, timeout=60).stdout
    on_disk = (ROOT / "docs" / "configuration.md").read_text()
    assert on_disk == generated, ("docs/configuration.md drifted from config.KEYS: run "
                                  "`python -m pyse config-reference > docs/configuration.md`")
    for name in KEYS:
        assert f"`{name}`" in on_disk


# -- near misses ---------------------------------------------------------------
@pytest.mark.parametrize("typo, likely", [("worker", "workers"), ("log_levle", "log_level"),
                                          ("worker_heartbeat_timout", "worker_heartbeat_timeout")])
def test_near_misses_name_the_likely_key(typo, likely):
    assert (typo, likely) in config_mod.near_misses({typo: 1, "my_app_port": 8080})


def test_own_keys_are_not_near_misses():
    assert config_mod.near_misses({"my_app_port": 1, "database_url": "x", "workers": 2}) == []


# -- reload, through the server --------------------------------------------------
class StubLogSetup:
    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
        self.applied: list[dict] = []
        self.reopened = 0

    def apply_config(self, config: dict) -> None:
        self.applied.append(config)

    def reopen(self) -> None:
        self.reopened += 1


class Source:
    """A config "file" that a test rewrites: a callable source."""

    def __init__(self, config: object) -> None:
        self.config = config
        self.calls = 0

    def __call__(self) -> object:
        self.calls += 1
        if isinstance(self.config, Exception):
            raise self.config
        return self.config


@pytest.fixture
def logger():
    log = logging.getLogger("pyse-test-config")
    log.setLevel(logging.DEBUG)
    return log


def make_server(source, logger):
    return Server(Worker, source, config_mod.load(source), StubLogSetup(logger))


def test_callable_source_is_called_again_at_reload(logger):
    source = Source({"workers": 2, "log_level": "info"})
    server = make_server(source, logger)
    assert source.calls == 1
    source.config = {"workers": 3, "log_level": "warn", "app": "v2"}
    server.reload_config()
    assert source.calls == 2
    assert (server.config["workers"], server.config["log_level"], server.config["app"]) == \
        (3, "warn", "v2")
    assert server._log_setup.applied[-1] is server.config


def test_restart_only_key_change_is_logged_as_needing_a_restart(logger, caplog):
    source = Source({"workers": 2, "log_rotate_age": 5, "daemonize": False})
    server = make_server(source, logger)
    source.config = {"workers": 4, "log_rotate_age": 9, "daemonize": False}
    with caplog.at_level(logging.DEBUG, logger=logger.name):
        server.reload_config()
    restart_lines = [r.getMessage() for r in caplog.records if "needs a restart" in r.getMessage()]
    assert len(restart_lines) == 1 and "log_rotate_age" in restart_lines[0]
    assert server.config["workers"] == 4, "reload keys take effect"


def test_reload_logs_near_misses(logger, caplog):
    source = Source({})
    server = make_server(source, logger)
    source.config = {"log_levle": "info"}
    with caplog.at_level(logging.DEBUG, logger=logger.name):
        server.reload_config()
    assert any("'log_levle'" in r.getMessage() and "'log_level'" in r.getMessage()
               for r in caplog.records if r.levelno == logging.WARNING)


@pytest.mark.parametrize("broken, reason", [
    (RuntimeError("disk on fire"), "disk on fire"),
    ({"workers": -3}, "'workers'"),
    (["not", "a", "dict"], "must be a dict"),
])
def test_broken_reload_keeps_the_running_config(logger, caplog, broken, reason):
    source = Source({"workers": 2, "app": "v1"})
    server = make_server(source, logger)
    before = dict(server.config)
    source.config = broken
    with caplog.at_level(logging.DEBUG, logger=logger.name):
        server.reload_config()
    assert server.config == before
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("keeping the running configuration" in m and reason in m for m in errors), errors
    assert server._log_setup.applied == [], "nothing of the broken config was applied"


def test_format_process_name():
    assert config_mod.format_process_name("se-worker-%d", 3) == "se-worker-3"
    assert config_mod.format_process_name("plain", 3) == "plain"
