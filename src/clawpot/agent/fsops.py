"""Filesystem operations on guest paths: ``stat``, ``list``, ``mkdir``, ``move``, ``remove``.

They serve E2B's ``filesystem.Filesystem`` service, so they behave as E2B's envd does: paths may be
relative to the home of the request's ``user`` (``accounts``), directories they create belong to that
user, and an entry describes a symlink by its target's type and permission bits.

An entry, as sent to the host (raw numbers: the host formats them)::

    {"name", "path", "mode": lstat st_mode, "size", "uid", "gid", "owner", "group", "mtime_ns",
     "target": resolved symlink target or null, "target_mode": the target's st_mode or null,
     "metadata": {key: value} of its user.e2b.* xattrs, when it has any}

``list`` streams entries as JSON lines (DATA on stdout, within the host's window) and ends with
END ``{count, truncated}``; it stops after the request's ``limit`` entries. The others answer with END.
Failures are ``io_error`` with the errno's name (``ENOENT`` for a missing path).
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import stat
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from . import metadata as file_metadata
from .accounts import ensure_dirs, request_account, request_path
from .protocol import MAX_PAYLOAD, ErrorCode, FrameType, Pipe
from .session import Session, SessionError, opt_int, os_error

if TYPE_CHECKING:
    import asyncio

    from .connection import Connection

# Entries encoded per event-loop turn while listing, so one huge directory cannot starve other sessions.
_ENTRIES_PER_TURN = 256
# Most entries one ``list`` returns (the host asks for fewer); directory depth walked at most.
MAX_LIST_ENTRIES = 1 << 20
MAX_LIST_DEPTH = 4096


class Names:
    """uid/gid to names, cached for one operation (a listing would otherwise read /etc/passwd per entry)."""

    def __init__(self) -> None:
        self._users: dict[int, str] = {}
        self._groups: dict[int, str] = {}

    def user(self, uid: int) -> str:
        name = self._users.get(uid)
        if name is None:
            try:
                name = pwd.getpwuid(uid).pw_name
            except KeyError:
                name = str(uid)
            self._users[uid] = name
        return name

    def group(self, gid: int) -> str:
        name = self._groups.get(gid)
        if name is None:
            try:
                name = grp.getgrgid(gid).gr_name
            except KeyError:
                name = str(gid)
            self._groups[gid] = name
        return name


def base_name(path: str) -> str:
    """The last element of ``path`` as Go's filepath.Base gives it (trailing slashes ignored)."""
    stripped = path.rstrip("/")
    return os.path.basename(stripped) if stripped else "/"


def entry(path: str, names: Names, st: os.stat_result | None = None) -> dict[str, Any]:
    """The entry of ``path`` (lstat, not following a final symlink); raises OSError."""
    if st is None:
        st = os.lstat(path)
    target: str | None = None
    target_mode: int | None = None
    if stat.S_ISLNK(st.st_mode):
        try:
            target = os.path.realpath(path, strict=True)
            target_mode = os.stat(target).st_mode
        except OSError:
            target = path  # as envd: a link that cannot be resolved names itself
    info = {
        "name": base_name(path),
        "path": path,
        "mode": st.st_mode,
        "size": st.st_size,
        "uid": st.st_uid,
        "gid": st.st_gid,
        "owner": names.user(st.st_uid),
        "group": names.group(st.st_gid),
        "mtime_ns": st.st_mtime_ns,
        "target": target,
        "target_mode": target_mode,
    }
    metadata = file_metadata.read(path)
    if metadata:
        info["metadata"] = metadata
    return info


def _stat_entry(path: str) -> dict[str, Any]:
    try:
        return entry(path, Names())
    except OSError as exc:
        raise os_error("stat", path, exc) from None


class StatSession(Session):
    """``stat``: ``path``, ``user``. END ``{entry}``."""

    op = "stat"

    def __init__(self, conn: Connection, stream_id: int, req: dict[str, Any]) -> None:
        super().__init__(conn, stream_id, req)
        self.path = request_path(req, request_account(req))

    def start(self) -> None:
        self.finish({"entry": _stat_entry(self.path)})


class MkdirSession(Session):
    """``mkdir``: ``path``, ``user``; creates missing parents too, owned by the user. END ``{entry}``.

    An existing directory is ``io_error``/``EEXIST``; an existing non-directory is ``bad_request``."""

    op = "mkdir"

    def __init__(self, conn: Connection, stream_id: int, req: dict[str, Any]) -> None:
        super().__init__(conn, stream_id, req)
        self.account = request_account(req)
        self.path = request_path(req, self.account)

    def start(self) -> None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise os_error("stat", self.path, exc) from None
        else:
            if stat.S_ISDIR(st.st_mode):
                raise SessionError(ErrorCode.IO_ERROR, f"directory already exists: {self.path}", "EEXIST")
            raise SessionError(
                ErrorCode.BAD_REQUEST, f"path already exists but is not a directory: {self.path}"
            )
        try:
            ensure_dirs(self.path, self.account)
        except OSError as exc:
            raise os_error("create directory", self.path, exc) from None
        self.finish({"entry": _stat_entry(self.path)})


class MoveSession(Session):
    """``move``: ``source``, ``destination``, ``user``; the destination's parents are created (owned by
    the user); rename(2) semantics otherwise. END ``{entry}`` of the destination."""

    op = "move"

    def __init__(self, conn: Connection, stream_id: int, req: dict[str, Any]) -> None:
        super().__init__(conn, stream_id, req)
        self.account = request_account(req)
        self.source = request_path(req, self.account, "source")
        self.destination = request_path(req, self.account, "destination")

    def start(self) -> None:
        try:
            ensure_dirs(os.path.dirname(self.destination) or "/", self.account)
        except OSError as exc:
            raise os_error("create directory for", self.destination, exc) from None
        try:
            os.rename(self.source, self.destination)
        except OSError as exc:
            raise os_error("move", self.source, exc) from None
        self.finish({"entry": _stat_entry(self.destination)})


class RemoveSession(Session):
    """``remove``: ``path``, ``user``; a file, link or whole directory tree (never following links).
    A path that does not exist is not an error (as os.RemoveAll). Runs in a worker thread, so a large
    tree does not stall the other sessions. END ``{removed}``."""

    op = "remove"

    def __init__(self, conn: Connection, stream_id: int, req: dict[str, Any]) -> None:
        super().__init__(conn, stream_id, req)
        self.path = request_path(req, request_account(req))
        self._job: asyncio.Future[bool] | None = None

    def start(self) -> None:
        self._job = self.loop.run_in_executor(None, _remove_all, self.path)
        self._job.add_done_callback(self._removed)

    def _removed(self, job: asyncio.Future[bool]) -> None:
        if self.done or job.cancelled():
            return
        exc = job.exception()
        if isinstance(exc, OSError):
            err = os_error("remove", self.path, exc)
            self.fail(err.code, str(err), err.errno)
        elif exc is not None:
            self.fail(ErrorCode.INTERNAL, f"cannot remove {self.path}: {exc}")
        else:
            self.finish({"removed": job.result()})


def _remove_all(path: str) -> bool:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)
    return True


class ListSession(Session):
    """``list``: ``path``, ``user``, ``depth`` (1 = the directory's own entries), ``limit``.

    The path may be a symlink to a directory; entries are walked in the target, depth first in name
    order, without following links below it, and carry paths under the path as requested."""

    op = "list"

    def __init__(self, conn: Connection, stream_id: int, req: dict[str, Any]) -> None:
        super().__init__(conn, stream_id, req)
        self.path = request_path(req, request_account(req))
        self.depth = opt_int(req, "depth", 1, 1, MAX_LIST_DEPTH)
        self.limit = opt_int(req, "limit", MAX_LIST_ENTRIES, 1, MAX_LIST_ENTRIES)
        self.count = 0
        self._names = Names()
        self._walk: Iterator[dict[str, Any]] | None = None
        self._pending = b""  # encoded entries not sent yet (no credit)
        self._exhausted = False
        self._truncated = False
        self._scheduled: asyncio.Handle | None = None

    def start(self) -> None:
        try:
            root = os.path.realpath(self.path, strict=True)
            st = os.stat(root)
        except OSError as exc:
            raise os_error("open directory", self.path, exc) from None
        if not stat.S_ISDIR(st.st_mode):
            raise SessionError(ErrorCode.IO_ERROR, f"path is not a directory: {self.path}", "ENOTDIR")
        self._walk = self._entries(root)
        self._schedule()

    def _entries(self, root: str) -> Iterator[dict[str, Any]]:
        # Pre-order, depth first, in name order: Go's filepath.WalkDir, which envd uses. One iterator of
        # sorted children per open level (at most ``depth`` of them).
        stack: list[tuple[Iterator[os.DirEntry[str]], str, int]] = []
        self._open_level(stack, root, "", 1)
        while stack:
            children, rel, level = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                continue
            child_rel = f"{rel}/{child.name}" if rel else child.name
            try:
                info = entry(child.path, self._names)
            except FileNotFoundError:
                continue  # removed while we walked
            info["path"] = os.path.normpath(os.path.join(self.path, child_rel))
            yield info
            if level < self.depth and stat.S_ISDIR(info["mode"]):
                self._open_level(stack, child.path, child_rel, level + 1)

    @staticmethod
    def _open_level(
        stack: list[tuple[Iterator[os.DirEntry[str]], str, int]], directory: str, rel: str, level: int
    ) -> None:
        try:
            with os.scandir(directory) as it:
                children = sorted(it, key=lambda d: os.fsencode(d.name))  # byte order, as Go
        except FileNotFoundError:
            return
        stack.append((iter(children), rel, level))

    def _schedule(self) -> None:
        if self._scheduled is None and not self.done:
            self._scheduled = self.loop.call_soon(self._pump)

    def _pump(self) -> None:
        self._scheduled = None
        if self.done or self._walk is None:
            return
        buf, self._pending = self._pending, b""
        lines: list[bytes] = [buf] if buf else []
        size, produced = len(buf), 0
        try:
            while not self._exhausted and size < MAX_PAYLOAD and produced < _ENTRIES_PER_TURN:
                info = next(self._walk, None)
                if info is None:
                    self._exhausted = True
                elif self.count >= self.limit:
                    self._exhausted = self._truncated = True
                else:
                    self.count += 1
                    produced += 1
                    line = json.dumps(info, separators=(",", ":")).encode() + b"\n"
                    lines.append(line)
                    size += len(line)
        except OSError as exc:
            err = os_error("list", self.path, exc)
            self.fail(err.code, str(err), err.errno)
            return
        self._pending = self._flush(b"".join(lines))
        if self._pending:
            return  # on_window / on_writable reschedule
        if self._exhausted:
            self.send(FrameType.EOF, flags=Pipe.STDOUT)
            self.finish({"count": self.count, "truncated": self._truncated})
            return
        self._schedule()

    def _flush(self, data: bytes) -> bytes:
        """Send ``data`` as far as the window and the link allow; returns what is left."""
        while data:
            room = min(MAX_PAYLOAD, self.send_window)
            if room <= 0 or self.conn.writing_paused:
                return data
            chunk, data = data[:room], data[room:]
            self.send_window -= len(chunk)
            self.send(FrameType.DATA, chunk, Pipe.STDOUT)
        return b""

    def on_window(self) -> None:
        self._schedule()

    def on_writable(self) -> None:
        self._schedule()

    def cleanup(self) -> None:
        if self._scheduled is not None:
            self._scheduled.cancel()
            self._scheduled = None
        self._walk = None
