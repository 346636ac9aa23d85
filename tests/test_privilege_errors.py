"""Privilege errors name the configuration key to fix (no root needed)."""
from __future__ import annotations

import pytest

from pyse import privilege


def identity(prefix: str, **keys) -> dict:
    """The three identity keys a validated configuration always holds."""
    return {prefix + k: keys.get(k) for k in ("chuser", "chgroup", "chumask")}


@pytest.mark.parametrize("prefix", ["", "worker_"])
def test_an_unknown_user_names_the_key(prefix):
    config = identity(prefix, chuser="pyse-no-such-user-x9")
    with pytest.raises(privilege.PrivilegeError) as info:
        privilege.change_from_config(config, prefix)
    message = str(info.value)
    assert message.startswith(f"{prefix}chuser 'pyse-no-such-user-x9' / {prefix}chgroup None")
    assert "no user 'pyse-no-such-user-x9' on this system" in message


def test_an_unknown_group_names_the_key():
    with pytest.raises(privilege.PrivilegeError, match=r"worker_chgroup 'pyse-no-such-group-x9'"
                                                       r".*no group 'pyse-no-such-group-x9'"):
        privilege.change_from_config(identity("worker_", chgroup="pyse-no-such-group-x9"),
                                     "worker_")


def test_nothing_configured_changes_nothing():
    privilege.change_from_config(identity(""))
    assert privilege.identity_from_config(identity("worker_", chumask=0o22), "worker_") == \
        (None, None, 0o22)
