"""The guest user a filesystem operation acts for, and paths resolved the way E2B's envd does.

A request may carry ``user`` (a name from the guest's /etc/passwd). Files and directories an operation
creates are then owned by that user, and a relative path (or one starting with ``~/``) is taken from the
user's home directory. Without ``user`` the path must be absolute and ownership is the agent's (root).
The agent itself keeps running as root: like envd, it acts on the user's behalf and hands ownership over.
"""

from __future__ import annotations

import os
import pwd
import stat
from dataclasses import dataclass
from typing import Any

from .protocol import ErrorCode
from .session import SessionError, opt_str


@dataclass(frozen=True, slots=True)
class Account:
    name: str
    uid: int
    gid: int
    home: str


def lookup(name: str) -> Account:
    """The guest account called ``name``; ``unknown_user`` when there is none."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise SessionError(ErrorCode.UNKNOWN_USER, f"no user {name!r} in the guest") from None
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir or "/")


def request_account(req: dict[str, Any]) -> Account | None:
    """The account named by the request's ``user`` field, or None when it names none."""
    name = opt_str(req, "user")
    if not name:
        return None
    return lookup(name)


def resolve(path: str, account: Account | None) -> str:
    """``path`` as envd resolves it: absolute paths as given; ``~`` and ``~/x`` from the user's home;
    any other relative path joined to the home and normalised (``a/../b`` is ``HOME/b``)."""
    if path.startswith("/"):
        return path
    if account is None:
        raise SessionError(ErrorCode.BAD_REQUEST, f"relative path {path!r} needs a user (for its home)")
    if path.startswith("~"):
        if len(path) > 1 and path[1] != "/":
            raise SessionError(ErrorCode.BAD_REQUEST, f"cannot expand {path!r}: only ~ and ~/ are supported")
        path = path[2:] if len(path) > 1 else ""
        # envd joins what follows ~ to the home without making it absolute first: same result here.
    return os.path.normpath(os.path.join(account.home, path))


def request_path(req: dict[str, Any], account: Account | None, key: str = "path") -> str:
    """The request's ``key`` path resolved for ``account`` (non-empty, no NUL)."""
    value = opt_str(req, key)
    if not value:
        raise SessionError(ErrorCode.BAD_REQUEST, f"{key!r} must be a non-empty path")
    return resolve(value, account)


def ensure_dirs(path: str, account: Account | None) -> None:
    """Create ``path`` and its missing parents (0755), each new one owned by ``account``.

    As envd does: an existing component that is not a directory is an error (``ENOTDIR``); a directory
    created meanwhile by someone else is fine (and gets the owner too)."""
    missing: list[str] = []
    current = path
    while True:
        try:
            st = os.stat(current)
        except FileNotFoundError:
            missing.append(current)
            parent = os.path.dirname(current)
            if parent == current:
                break
            current = parent
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(20, "Not a directory", current)
        break
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o755)
        except FileExistsError:
            pass
        if account is not None:
            os.chown(directory, account.uid, account.gid)
