"""Guest filesystem operations from the host: stat, list, mkdir, move, remove and watch.

The agent's answers are untrusted (docs/agent-protocol.md): every entry and event is checked field by
field (a lie is a ``ProtocolError``), strings are made valid UTF-8 and bounded, a listing stops at the
caller's limit whatever the agent sends, JSON lines are bounded (``limits.AGENT_FS_LINE_MAX``), and a
watch holds no more than its stream's window plus what the caller asks for.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import stat
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from clawpot import limits
from clawpot.agent.protocol import FrameType, Pipe
from clawpot.agent_client.connection import AgentConnection, Stream, guest_int, guest_json
from clawpot.agent_client.errors import GuestError, ProtocolError
from clawpot.agent_client.untrusted import printable

# Lone surrogates: bytes of a guest path that are not UTF-8 (the agent's JSON carries them as \udcXX).
_SURROGATE = re.compile("[\ud800-\udfff]")
EVENT_TYPES = frozenset({"create", "write", "remove", "rename", "chmod"})


@dataclass(frozen=True, slots=True)
class Entry:
    """One guest file, directory or link as ``lstat`` sees it; for a link, ``target`` (resolved, or the
    link itself when it cannot be) and ``target_mode`` (None for a dangling link)."""

    name: str
    path: str
    mode: int
    size: int
    uid: int
    gid: int
    owner: str
    group: str
    mtime_ns: int
    target: str | None = None
    target_mode: int | None = None
    metadata: dict[str, str] | None = None  # user-defined (E2B's user.e2b.* xattrs), None when none

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)

    @property
    def effective_mode(self) -> int | None:
        """The mode of what the entry names: the target's for a link (None when dangling)."""
        return self.target_mode if self.is_symlink else self.mode


@dataclass(frozen=True, slots=True)
class WatchEvent:
    name: str
    type: str  # one of EVENT_TYPES
    entry: Entry | None = None


def guest_text(value: Any, what: str, limit: int = limits.AGENT_FS_TEXT_MAX) -> str:
    """A string from the guest as valid UTF-8 (lone surrogates, i.e. undecodable bytes, become U+FFFD),
    at most ``limit`` characters; anything else is a ProtocolError."""
    if not isinstance(value, str) or len(value) > limit:
        raise ProtocolError(f"malformed {what} from the agent: {printable(repr(value), 40)}")
    return _SURROGATE.sub("\ufffd", value)


def parse_entry(body: Any) -> Entry:
    if not isinstance(body, dict):
        raise ProtocolError("malformed entry from the agent: not an object")

    def num(key: str, lo: int, hi: int, required: bool = True) -> int | None:
        value = guest_int(body, key, lo, hi, "entry")
        if value is None and required:
            raise ProtocolError(f"malformed entry from the agent: no {key}")
        return value

    target = body.get("target")
    return Entry(
        name=guest_text(body.get("name"), "entry name"),
        path=guest_text(body.get("path"), "entry path"),
        mode=num("mode", 0, 0o177777) or 0,
        size=num("size", 0, 2**63 - 1) or 0,
        uid=num("uid", 0, 2**32 - 1) or 0,
        gid=num("gid", 0, 2**32 - 1) or 0,
        owner=guest_text(body.get("owner"), "entry owner", 256),
        group=guest_text(body.get("group"), "entry group", 256),
        mtime_ns=num("mtime_ns", -(2**63), 2**63 - 1) or 0,
        target=None if target is None else guest_text(target, "symlink target"),
        target_mode=num("target_mode", 0, 0o177777, required=False),
        metadata=guest_metadata(body.get("metadata")),
    )


def guest_metadata(value: Any) -> dict[str, str] | None:
    """File metadata from the guest: string keys and values within envd's size bound, or None."""
    if value is None:
        return None
    if not isinstance(value, dict) or len(value) > limits.AGENT_FS_METADATA_KEYS:
        raise ProtocolError("malformed metadata from the agent")
    total = 0
    out: dict[str, str] = {}
    for key, val in value.items():
        out[guest_text(key, "metadata key", 256)] = guest_text(val, "metadata value", 4096)
        total += len(key) + len(val)
    if total > limits.AGENT_FS_METADATA_BYTES:
        raise ProtocolError("metadata from the agent exceeds its bound")
    return out or None


class LineReader:
    """Complete JSON lines out of DATA chunks; a partial line longer than the bound is a ProtocolError."""

    def __init__(self, limit: int = limits.AGENT_FS_LINE_MAX) -> None:
        self._partial = b""
        self._limit = limit

    def feed(self, data: bytes) -> Iterator[dict[str, Any]]:
        buf = self._partial + data if self._partial else data
        start = 0
        while (nl := buf.find(b"\n", start)) >= 0:
            if nl - start > self._limit:
                raise ProtocolError(f"line of more than {self._limit} bytes from the agent")
            try:
                obj = json.loads(buf[start:nl])
            except (ValueError, RecursionError):
                raise ProtocolError("malformed JSON line from the agent") from None
            if not isinstance(obj, dict):
                raise ProtocolError("malformed JSON line from the agent: not an object")
            yield obj
            start = nl + 1
        self._partial = buf[start:]
        if len(self._partial) > self._limit:
            raise ProtocolError(f"line of more than {self._limit} bytes from the agent")

    @property
    def partial(self) -> bool:
        return bool(self._partial)


def _request(op: str, user: str | None, **fields: Any) -> dict[str, Any]:
    req: dict[str, Any] = {"op": op, **fields}
    if user:
        req["user"] = user
    return req


async def _one_shot(conn: AgentConnection, request: dict[str, Any]) -> dict[str, Any]:
    stream = conn.open_stream(request)
    try:
        return guest_json(await stream.recv_until(FrameType.END), f"{request['op']} result")
    finally:
        stream.close()


def _result_entry(result: dict[str, Any]) -> Entry:
    return parse_entry(result.get("entry"))


async def stat_path(conn: AgentConnection, path: str, *, user: str | None = None) -> Entry:
    """The entry of ``path`` (relative paths from ``user``'s home). RemoteError errno ENOENT: missing."""
    return _result_entry(await _one_shot(conn, _request("stat", user, path=path)))


async def make_dir(conn: AgentConnection, path: str, *, user: str | None = None) -> Entry:
    """Create ``path`` and its parents, owned by ``user``. RemoteError errno EEXIST: it already is a
    directory; code ``bad_request``: it exists and is something else."""
    return _result_entry(await _one_shot(conn, _request("mkdir", user, path=path)))


async def move(conn: AgentConnection, source: str, destination: str, *, user: str | None = None) -> Entry:
    """rename(2) ``source`` to ``destination`` (its parents created); the destination's entry."""
    return _result_entry(
        await _one_shot(conn, _request("move", user, source=source, destination=destination))
    )


async def remove(conn: AgentConnection, path: str, *, user: str | None = None) -> bool:
    """Remove a file, link or directory tree; False when nothing was there."""
    return (await _one_shot(conn, _request("remove", user, path=path))).get("removed") is True


@dataclass(frozen=True, slots=True)
class Listing:
    entries: list[Entry]
    truncated: bool  # the directory holds more than the limit asked for


async def list_dir(
    conn: AgentConnection,
    path: str,
    *,
    depth: int = 1,
    user: str | None = None,
    limit: int = limits.E2B_LIST_MAX_ENTRIES,
) -> Listing:
    """The entries under directory ``path`` down to ``depth`` levels, depth first in name order; at most
    ``limit`` of them (``truncated`` says there were more). The agent streams them as JSON lines."""
    stream = conn.open_stream(_request("list", user, path=path, depth=depth, limit=limit))
    entries: list[Entry] = []
    lines = LineReader()
    truncated = False
    try:
        while True:
            frame = await stream.recv_until(FrameType.DATA, FrameType.END)
            if frame.type == FrameType.END:
                result = guest_json(frame, "list result")
                truncated = truncated or result.get("truncated") is True
                break
            stream.consumed(len(frame.payload))
            for body in lines.feed(frame.payload):
                if len(entries) >= limit:
                    return Listing(entries, True)  # the agent went past the limit: stop reading
                entries.append(parse_entry(body))
        if lines.partial:
            raise ProtocolError("listing from the agent ends in the middle of a line")
    finally:
        stream.close()
    return Listing(entries, truncated)


class Watch:
    """Events under a guest directory, from the agent's ``watch`` session (see clawpot.agent.watch).

    Read them either as they come (``async for event in watch``) or in batches with ``sync``, which
    returns every event of operations finished before the call. What waits here is bounded by the
    stream's window; close the watch to end it in the guest.
    """

    def __init__(self, stream: Stream, watches: int) -> None:
        self._stream = stream
        self.watches = watches
        self._lines = LineReader()
        self._backlog: deque[WatchEvent] = deque()
        self._sync_token = 0
        self._synced = -1
        self.dropped = 0  # events the agent could not keep for us (its queue was full)
        self._closed = False
        self._lock = asyncio.Lock()

    async def _read_frame(self) -> None:
        """Read one DATA frame into the backlog (and note sync markers); raises when the watch ended."""
        frame = await self._stream.recv_until(FrameType.DATA, FrameType.END)
        if frame.type == FrameType.END:
            raise GuestError("the watch ended in the guest")
        self._stream.consumed(len(frame.payload))
        for body in self._lines.feed(frame.payload):
            if "synced" in body:
                token = guest_int(body, "synced", 0, 2**62, "watch sync")
                self._synced = max(self._synced, token if token is not None else -1)
            elif "dropped" in body:
                self.dropped += guest_int(body, "dropped", 0, 2**62, "watch drop count") or 0
            else:
                self._backlog.append(parse_event(body))

    def __aiter__(self) -> Watch:
        return self

    async def __anext__(self) -> WatchEvent:
        async with self._lock:
            while not self._backlog:
                await self._read_frame()
            return self._backlog.popleft()

    async def sync(
        self,
        max_events: int = limits.E2B_WATCH_EVENTS_PER_CALL,
        timeout: float = limits.E2B_WATCH_SYNC_TIMEOUT,  # noqa: ASYNC109 - a bound on the agent's answer
    ) -> list[WatchEvent]:
        """Every event of operations that finished before this call (at most ``max_events``; the rest
        stays for the next call). After ``timeout`` seconds without the agent's confirmation, what
        arrived so far."""
        async with self._lock:
            self._sync_token += 1
            token = self._sync_token
            await self._stream.send_data(json.dumps({"sync": token}).encode() + b"\n", Pipe.STDIN)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    while self._synced < token and len(self._backlog) < max_events:
                        await self._read_frame()
            count = min(max_events, len(self._backlog))
            return [self._backlog.popleft() for _ in range(count)]

    def close(self) -> None:
        """End the watch in the guest (its inotify descriptor is closed)."""
        self._closed = True
        self._stream.close()

    @property
    def closed(self) -> bool:
        """Closed here, or ended by the guest or a lost connection."""
        return self._closed or self._stream.finished


def parse_event(body: dict[str, Any]) -> WatchEvent:
    kind = body.get("type")
    if kind not in EVENT_TYPES:
        raise ProtocolError(f"malformed watch event from the agent: type {printable(repr(kind), 20)}")
    raw_entry = body.get("entry")
    return WatchEvent(
        name=guest_text(body.get("name"), "event name"),
        type=str(kind),
        entry=None if raw_entry is None else parse_entry(raw_entry),
    )


async def open_watch(
    conn: AgentConnection,
    path: str,
    *,
    user: str | None = None,
    recursive: bool = False,
    include_entry: bool = False,
) -> Watch:
    """Start watching ``path``; returns once the guest watches it (events of later operations are seen).
    RemoteError errno ENOENT: no such directory; ENOTDIR: not a directory."""
    stream = conn.open_stream(
        _request("watch", user, path=path, recursive=recursive, include_entry=include_entry)
    )
    try:
        info = guest_json(await stream.recv_until(FrameType.INFO), "watch info")
        watches = guest_int(info, "watches", 0, 2**31, "watch info") or 0
    except BaseException:
        stream.close()
        raise
    return Watch(stream, watches)
