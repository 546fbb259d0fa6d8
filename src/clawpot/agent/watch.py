"""The ``watch`` operation: filesystem events under a directory, from inotify (through ctypes).

Request: ``path``, ``user``, ``recursive``, ``include_entry``. Once the directory (and with
``recursive`` every directory below it) is watched the agent sends INFO ``{"watches": n}``; from then on
each event is a JSON line in DATA on stdout::

    {"name": "sub/file.txt", "type": "create" | "write" | "remove" | "rename" | "chmod", "entry": {...}}

named relative to the watched directory, typed as fsnotify (hence E2B's envd) types them: a file moved
in is ``create``, moved away ``rename``; ``entry`` (see ``fsops``) only with ``include_entry`` and for
create, write and chmod events whose path still exists. The watch runs until the host cancels it.

The host may send ``{"sync": N}`` lines (DATA on stdin): the agent then reads every event the kernel
has queued so far and answers ``{"synced": N}`` after them. Since an operation's inotify events are
queued before the operation returns, a host that syncs after a write is sure to have that write's
events. Bounded: at most ``MAX_PENDING`` events wait for the host's credit; beyond that events are
counted, not kept, and reported as ``{"dropped": N}`` once there is room again (so is a kernel queue
overflow); at most ``MAX_WATCHES`` directories are watched.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import stat
import struct
from collections import deque
from typing import TYPE_CHECKING, Any

from .accounts import request_account, request_path
from .fsops import Names, entry
from .protocol import MAX_PAYLOAD, ErrorCode, FrameType, Pipe, encode_json
from .session import Session, SessionError, opt_bool, os_error

if TYPE_CHECKING:
    from .connection import Connection

MAX_PENDING = 4096
MAX_WATCHES = 8192
_MAX_SYNC_LINE = 256

IN_MODIFY = 0x2
IN_ATTRIB = 0x4
IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_ISDIR = 0x40000000
# The events fsnotify asks for (and nothing else: access and close events are not reported).
WATCH_MASK = (
    IN_MODIFY
    | IN_ATTRIB
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_CREATE
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
)
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; the name follows, NUL padded
_READ_SIZE = 64 * 1024
_CARRIES_ENTRY = ("create", "write", "chmod")

_libc: Any = None


def _inotify() -> Any:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    return _libc


def event_types(mask: int) -> list[str]:
    """The E2B event types of one inotify event, in fsnotify's order (one event may carry several)."""
    types = []
    if mask & (IN_CREATE | IN_MOVED_TO):
        types.append("create")
    if mask & (IN_MOVE_SELF | IN_MOVED_FROM):
        types.append("rename")
    if mask & IN_ATTRIB:
        types.append("chmod")
    if mask & IN_MODIFY:
        types.append("write")
    if mask & (IN_DELETE | IN_DELETE_SELF):
        types.append("remove")
    return types


def parse_events(buf: bytes) -> list[tuple[int, int, str]]:
    """(wd, mask, name) of each ``struct inotify_event`` in ``buf`` (what one read(2) returned)."""
    out = []
    pos = 0
    while pos + _EVENT.size <= len(buf):
        wd, mask, _cookie, length = _EVENT.unpack_from(buf, pos)
        pos += _EVENT.size
        raw = buf[pos : pos + length].split(b"\0", 1)[0]
        pos += length
        out.append((wd, mask, os.fsdecode(raw)))
    return out


class WatchSession(Session):
    op = "watch"

    def __init__(self, conn: Connection, stream_id: int, req: dict[str, Any]) -> None:
        super().__init__(conn, stream_id, req)
        self.root = request_path(req, request_account(req))
        self.recursive = opt_bool(req, "recursive", False)
        self.include_entry = opt_bool(req, "include_entry", False)
        self._fd: int | None = None
        self._dirs: dict[int, str] = {}  # watch descriptor -> directory relative to the root ("" = root)
        self._pending: deque[bytes] = deque()
        self._dropped = 0
        self._stdin = b""
        self._names = Names()

    # --- setup -----------------------------------------------------------------------------------------

    def start(self) -> None:
        try:
            st = os.stat(self.root)
        except OSError as exc:
            raise os_error("watch", self.root, exc) from None
        if not stat.S_ISDIR(st.st_mode):
            raise SessionError(ErrorCode.IO_ERROR, f"path is not a directory: {self.root}", "ENOTDIR")
        try:
            libc = _inotify()
            fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        except (OSError, AttributeError) as exc:
            raise SessionError(ErrorCode.NOT_SUPPORTED, f"inotify is not available: {exc}") from None
        if fd < 0:
            err = ctypes.get_errno()
            raise os_error("watch", self.root, OSError(err, os.strerror(err)))
        self._fd = fd
        try:
            self._add_tree("")
        except OSError as exc:
            raise os_error("watch", self.root, exc) from None
        self.loop.add_reader(fd, self._readable)
        self.send(FrameType.INFO, encode_json({"watches": len(self._dirs)}))

    def _add(self, rel: str) -> None:
        if len(self._dirs) >= MAX_WATCHES:
            raise OSError(28, f"more than {MAX_WATCHES} directories to watch")
        path = os.path.join(self.root, rel) if rel else self.root
        mask = WATCH_MASK | IN_ONLYDIR | (IN_DONT_FOLLOW if rel else 0)
        wd = _inotify().inotify_add_watch(self._fd, os.fsencode(path), mask)
        if wd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), path)
        self._dirs[wd] = rel

    def _add_tree(self, rel: str) -> None:
        """Watch ``rel`` and, when recursive, every directory below it (links not followed)."""
        todo = [rel]
        while todo:
            current = todo.pop()
            try:
                self._add(current)
            except FileNotFoundError:
                continue  # gone before we got to it
            if not self.recursive:
                continue
            path = os.path.join(self.root, current) if current else self.root
            with contextlib.suppress(FileNotFoundError, NotADirectoryError), os.scandir(path) as it:
                for child in it:
                    if child.is_dir(follow_symlinks=False):
                        todo.append(f"{current}/{child.name}" if current else child.name)

    def _forget_tree(self, rel: str) -> None:
        """Stop watching ``rel`` and below (moved out of the tree: its events would carry stale names)."""
        prefix = rel + "/"
        for wd, name in list(self._dirs.items()):
            if name == rel or name.startswith(prefix):
                del self._dirs[wd]
                if self._fd is not None:
                    _inotify().inotify_rm_watch(self._fd, wd)

    # --- events ----------------------------------------------------------------------------------------

    def _readable(self) -> None:
        self._drain_kernel()
        self._flush()

    def _drain_kernel(self) -> None:
        """Read everything inotify has queued (non-blocking) into the pending lines."""
        while self._fd is not None and not self.done:
            try:
                buf = os.read(self._fd, _READ_SIZE)
            except BlockingIOError:
                return
            except OSError as exc:
                err = os_error("read events of", self.root, exc)
                self.fail(err.code, str(err), err.errno)
                return
            if not buf:
                return
            for wd, mask, name in parse_events(buf):
                self._event(wd, mask, name)

    def _event(self, wd: int, mask: int, name: str) -> None:
        if mask & IN_Q_OVERFLOW:
            self._dropped += 1
            return
        rel_dir = self._dirs.get(wd)
        if rel_dir is None:
            return  # a watch we already dropped
        if mask & IN_IGNORED:
            del self._dirs[wd]
            return
        if mask & (IN_DELETE_SELF | IN_MOVE_SELF) and rel_dir:
            return  # the parent's watch reports it (as fsnotify does when watching both)
        rel = f"{rel_dir}/{name}" if rel_dir and name else (name or rel_dir or ".")
        if self.recursive and mask & IN_ISDIR and name:
            if mask & (IN_CREATE | IN_MOVED_TO):
                with contextlib.suppress(OSError):
                    self._add_tree(rel)
            elif mask & IN_MOVED_FROM:
                self._forget_tree(rel)
        for kind in event_types(mask):
            event: dict[str, Any] = {"name": rel, "type": kind}
            if self.include_entry and kind in _CARRIES_ENTRY:
                with contextlib.suppress(OSError):
                    event["entry"] = entry(os.path.join(self.root, rel), self._names)
            self._queue(event)

    def _queue(self, obj: dict[str, Any]) -> None:
        if len(self._pending) >= MAX_PENDING:
            self._dropped += 1
            return
        self._pending.append(json.dumps(obj, separators=(",", ":")).encode() + b"\n")

    def _flush(self) -> None:
        """Send pending lines within the host's credit, several per DATA frame."""
        if self._dropped and len(self._pending) < MAX_PENDING:
            self._pending.append(encode_json({"dropped": self._dropped}) + b"\n")
            self._dropped = 0
        while self._pending and not self.done and not self.conn.writing_paused:
            batch: list[bytes] = []
            size = 0
            while self._pending and size + len(self._pending[0]) <= min(MAX_PAYLOAD, self.send_window):
                line = self._pending.popleft()
                batch.append(line)
                size += len(line)
            if not batch:
                return  # no credit for the next line: on_window resumes
            self.send_window -= size
            self.send(FrameType.DATA, b"".join(batch), Pipe.STDOUT)

    def on_window(self) -> None:
        self._flush()

    def on_writable(self) -> None:
        self._flush()

    # --- host requests ---------------------------------------------------------------------------------

    def on_data(self, pipe: int, data: bytes) -> None:
        if pipe != Pipe.STDIN:
            raise SessionError(ErrorCode.BAD_REQUEST, "watch sessions take DATA on stdin only")
        self._stdin += data
        self.grant(len(data), flush=True)
        while b"\n" in self._stdin:
            line, self._stdin = self._stdin.split(b"\n", 1)
            self._request(line)
        if len(self._stdin) > _MAX_SYNC_LINE:
            raise SessionError(ErrorCode.BAD_REQUEST, "watch request line too long")

    def _request(self, line: bytes) -> None:
        try:
            body = json.loads(line)
            token = body["sync"]
        except (ValueError, TypeError, KeyError):
            raise SessionError(ErrorCode.BAD_REQUEST, 'watch takes {"sync": N} lines') from None
        if not isinstance(token, int) or isinstance(token, bool):
            raise SessionError(ErrorCode.BAD_REQUEST, "sync token must be an integer")
        self._drain_kernel()
        if self.done:
            return
        # The marker is queued even when events were dropped: the host must never wait in vain.
        self._pending.append(encode_json({"synced": token}) + b"\n")
        self._flush()

    def on_eof(self, pipe: int) -> None:
        pass  # the host will send no more syncs; the watch goes on until cancelled

    def cleanup(self) -> None:
        if self._fd is not None:
            self.loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = None
        self._pending.clear()
