"""Fixtures of the ServerEngine spec port (see README.md here)."""
from __future__ import annotations

import pytest

import helpers


@pytest.fixture
def se_run(tmp_path):
    """Starts tests/programs/se_context.py runs (see context_harness); at
    teardown kills and reaps whatever they left."""
    from context_harness import ContextRun

    yield from helpers.started_runs(lambda config, **kw: ContextRun(tmp_path, config, **kw))
