"""Dropping privileges: ``chuser``/``chgroup``/``chumask`` (the daemon, after
daemonizing and before the server is created) and ``worker_ch*`` (each worker
process, right after the fork).

The order is fixed by what each call needs: supplementary groups and the gid
can only be changed while we are still root, so groups come first
(``initgroups`` for the user's supplementary groups, then ``setgid``), the
uid last.  ``setuid`` as root sets the real, effective and saved uid at once,
so the process cannot switch back; :func:`change` checks that it really
cannot (``setuid(0)`` must fail) and raises otherwise.

Differences from ServerEngine 2.2.2: it keeps root's gid when only
``chuser`` is given and adds the user's groups to root's instead of
replacing them; pyse switches to the user's primary group and sets exactly
the user's groups.
"""
from __future__ import annotations

import grp
import os
import pwd
from typing import Any, Optional, Union

Id = Union[int, str, None]


class PrivilegeError(RuntimeError):
    """A privilege change that failed or did not hold; the message says what
    was attempted and why it failed."""


def lookup_user(user: Union[int, str]) -> pwd.struct_passwd:
    try:
        if isinstance(user, int) or user.isdigit():
            return pwd.getpwuid(int(user))
        return pwd.getpwnam(user)
    except KeyError:
        raise PrivilegeError(f"no user {user!r} on this system") from None


def lookup_group(group: Union[int, str]) -> int:
    if isinstance(group, int) or group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise PrivilegeError(f"no group {group!r} on this system") from None


def identity_from_config(config: dict[str, Any], prefix: str = "") -> tuple[Id, Id, Optional[int]]:
    """(user, group, umask) from ``<prefix>chuser``, ``<prefix>chgroup`` and
    ``<prefix>chumask``; prefix is "" for the daemon, "worker_" for workers."""
    return config[prefix + "chuser"], config[prefix + "chgroup"], config[prefix + "chumask"]


def change_from_config(config: dict[str, Any], prefix: str = "") -> None:
    """:func:`change` to the identity the config names, if any; the error
    names the configuration keys, so a user knows which one to fix."""
    user, group, umask = identity_from_config(config, prefix)
    if user is None and group is None and umask is None:
        return
    try:
        change(user, group, umask)
    except PrivilegeError as e:
        raise PrivilegeError(f"{prefix}chuser {user!r} / {prefix}chgroup {group!r} / "
                             f"{prefix}chumask {umask!r}: {e}") from e


def change(user: Id, group: Id, umask: Optional[int] = None) -> None:
    """Switches to group (or the user's primary group), the user's
    supplementary groups, then the user; sets the umask.  None leaves that
    part as it is.  Raises :class:`PrivilegeError`."""
    entry = lookup_user(user) if user is not None else None
    gid: Optional[int] = None
    if group is not None:
        gid = lookup_group(group)
    elif entry is not None:
        gid = entry.pw_gid
    if gid is not None:
        set_groups(entry, gid)
    if entry is not None:
        set_user(entry)
    if umask is not None:
        os.umask(umask)
    verify(entry, gid)


def set_groups(entry: Optional[pwd.struct_passwd], gid: int) -> None:
    if os.getgid() == gid and os.getegid() == gid and os.geteuid() != 0:
        return  # already there; an unprivileged process could not set it anyway
    try:
        if entry is not None:
            # The user's supplementary groups, exactly ("id -G" for the user).
            os.initgroups(entry.pw_name, gid)
        else:
            os.setgroups([gid])
    except OSError as e:
        raise PrivilegeError(f"setting the supplementary groups for gid {gid} failed: "
                             f"{e.strerror} (only root can change groups)") from e
    try:
        os.setgid(gid)
    except OSError as e:
        raise PrivilegeError(f"setgid({gid}) failed: {e.strerror}") from e


def set_user(entry: pwd.struct_passwd) -> None:
    uid = entry.pw_uid
    if os.getuid() == uid and os.geteuid() == uid:
        return
    try:
        os.setuid(uid)
    except OSError as e:
        raise PrivilegeError(f"setuid({uid}) for user {entry.pw_name!r} failed: "
                             f"{e.strerror}") from e


def verify(entry: Optional[pwd.struct_passwd], gid: Optional[int]) -> None:
    """Raises PrivilegeError unless the change holds and cannot be undone."""
    if entry is not None:
        uid = entry.pw_uid
        ids = os.getresuid()
        if ids != (uid, uid, uid):
            raise PrivilegeError(f"after switching to user {entry.pw_name!r}, the real, "
                                 f"effective and saved uids are {ids}, not all {uid}")
        if uid != 0 and _can_regain_root():
            raise PrivilegeError(f"after switching to user {entry.pw_name!r} the process "
                                 f"could become root again")
    if gid is not None:
        gids = os.getresgid()
        if gids != (gid, gid, gid):
            raise PrivilegeError(f"after switching to gid {gid}, the real, effective and "
                                 f"saved gids are {gids}")


def _can_regain_root() -> bool:
    try:
        os.setuid(0)
    except PermissionError:
        return False
    return True
