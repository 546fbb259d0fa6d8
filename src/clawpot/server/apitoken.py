"""The API token file: ``<data>/api-token``, made once at the server's first start, kept across restarts.

Whoever can read the file can drive every VM over TCP, so it is created 0600 (owner only) and the
server refuses to start on one that others can read or write: the token would already be out. It is
written atomically (a temporary file, then ``link``), so a crash never leaves a half-written token and
two starts racing on a fresh data directory agree on one token. No gRPC here: the CLI reads the file
through ``read_token``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import stat
import tempfile
from pathlib import Path

from clawpot import limits, paths

_TOKEN = re.compile(rf"[\x21-\x7e]{{{limits.API_TOKEN_MIN_CHARS},{limits.API_TOKEN_MAX_CHARS}}}")


class TokenError(Exception):
    """The token file is missing, unreadable, unsafe or malformed (the message is one line)."""


def new_token() -> str:
    return secrets.token_urlsafe(limits.API_TOKEN_BYTES)


def valid_token(text: str) -> bool:
    """A token is printable ASCII without spaces, of a sane length (it goes into an HTTP/2 header)."""
    return _TOKEN.fullmatch(text) is not None


def read_token(path: Path) -> str:
    """The token in ``path``; ``TokenError`` (one line) if it cannot be read or is not a token.

    ``PermissionError`` and ``FileNotFoundError`` pass through as they are, so callers can tell
    "not yours to read" and "no server made one here" from a broken file.
    """
    # O_NOFOLLOW: the token is a regular file the server made, never a link to somewhere else.
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise TokenError(f"{path} is not a regular file")
        raw = f.read(limits.API_TOKEN_MAX_CHARS + 2)
    text = raw.decode("ascii", errors="replace").strip()
    if not valid_token(text):
        raise TokenError(
            f"{path} does not hold a valid API token ({limits.API_TOKEN_MIN_CHARS}-"
            f"{limits.API_TOKEN_MAX_CHARS} printable characters): delete it and restart the server "
            "to make a new one"
        )
    return text


def ensure_token(data_dir: Path) -> str:
    """The server's token: the existing file's (checked to be private), else a new one written 0600."""
    path = paths.api_token(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        return _load_private(path)
    except FileNotFoundError:
        pass
    token = new_token()
    fd, tmp = tempfile.mkstemp(prefix=".api-token.", dir=data_dir)  # mkstemp creates it 0600
    try:
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # atomic, and fails if a concurrent start got there first
        except FileExistsError:
            return _load_private(path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    _fsync_dir(data_dir)
    return token


def _load_private(path: Path) -> str:
    st = os.lstat(path)  # FileNotFoundError: no token yet
    if stat.S_ISREG(st.st_mode) and st.st_mode & 0o077:
        raise TokenError(
            f"{path} is open to other users (mode {stat.S_IMODE(st.st_mode):04o}); the token may have "
            "leaked: delete the file to make a new token, or chmod 600 it to keep this one"
        )
    if stat.S_ISREG(st.st_mode) and st.st_uid != os.geteuid():
        raise TokenError(f"{path} belongs to uid {st.st_uid}, not to the server's uid {os.geteuid()}")
    try:
        return read_token(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise TokenError(f"{path} is a symbolic link; the token must be a regular file") from None
        raise TokenError(f"cannot read {path}: {exc.strerror}") from None


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
