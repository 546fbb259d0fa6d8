"""User-defined file metadata, as E2B's envd keeps it: extended attributes ``user.e2b.<key>``.

Keys and values are printable ASCII; a key is at most 246 bytes (the xattr name limit minus the prefix)
and all of a file's metadata at most 4096 bytes, counting the prefix per key. Writing replaces the
file's whole set (keys not given are removed). A filesystem without user xattrs (proc, sys) keeps
none and that is not an error, as in envd.
"""

from __future__ import annotations

import errno
import os
from typing import Any

from .protocol import ErrorCode
from .session import SessionError

PREFIX = "user.e2b."
MAX_KEY = 255 - len(PREFIX)
MAX_TOTAL = 4096
_UNSUPPORTED = (errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS)


def _printable(text: str) -> bool:
    return all(0x20 <= ord(c) <= 0x7E for c in text)


def validate(value: Any) -> dict[str, str]:
    """The request's ``metadata`` as a checked dict; ``bad_request`` when envd would refuse it."""
    if not isinstance(value, dict):
        raise SessionError(ErrorCode.BAD_REQUEST, "'metadata' must be an object of strings")
    total = 0
    for key, val in value.items():
        if not isinstance(val, str) or not key:
            raise SessionError(ErrorCode.BAD_REQUEST, "metadata keys must be non-empty, values strings")
        if len(key) > MAX_KEY:
            raise SessionError(ErrorCode.BAD_REQUEST, f"metadata key {key[:40]!r} exceeds {MAX_KEY} bytes")
        if not _printable(key) or not _printable(val):
            raise SessionError(ErrorCode.BAD_REQUEST, "metadata must be printable ASCII")
        total += len(PREFIX) + len(key) + len(val)
    if total > MAX_TOTAL:
        raise SessionError(ErrorCode.BAD_REQUEST, f"total metadata size {total} exceeds {MAX_TOTAL} bytes")
    return dict(value)


def write(fd: int, metadata: dict[str, str]) -> None:
    """Make ``metadata`` the file's whole set; raises OSError (not for a filesystem without xattrs)."""
    try:
        existing = os.listxattr(fd)
    except OSError as exc:
        if exc.errno in _UNSUPPORTED:
            return
        raise
    for name in existing:
        if name.startswith(PREFIX) and name[len(PREFIX) :] not in metadata:
            try:
                os.removexattr(fd, name)
            except OSError as exc:
                if exc.errno != errno.ENODATA:
                    raise
    for key, val in metadata.items():
        os.setxattr(fd, PREFIX + key, val.encode("ascii"))


def read(path: str) -> dict[str, str] | None:
    """The metadata of ``path`` (following links, as envd), or None when it has none or cannot tell."""
    try:
        names = os.listxattr(path)
    except OSError:
        return None
    found: dict[str, str] = {}
    for name in names:
        if not name.startswith(PREFIX):
            continue
        try:
            raw = os.getxattr(path, name)
        except OSError:
            continue
        try:
            found[name[len(PREFIX) :]] = raw.decode("utf-8")
        except UnicodeDecodeError:
            continue
    return found or None
