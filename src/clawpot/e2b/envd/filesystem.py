"""``filesystem.Filesystem`` (E2B's envd) over Connect, translated to the agent's filesystem operations.

Each call acts for the user of ``Authorization: Basic`` (``users.username``; E2B's default ``user``):
relative paths are taken from that user's home (an empty path is the home itself), and what MakeDir,
Move and uploads create belongs to that user. Codes as envd answers them, which the SDK maps: a missing
path is NOT_FOUND (``FileNotFoundException``; ``exists`` answers False), MakeDir of an existing
directory ALREADY_EXISTS (``make_dir`` answers False), a path of the wrong kind INVALID_ARGUMENT, an
unknown user UNAUTHENTICATED.

Watchers: ``WatchDir`` streams events (after a ``start`` event, with keepalives); ``CreateWatcher``
keeps a watch open between calls, ``GetWatcherEvents`` returns the events of every operation that
finished before it (the agent confirms it has read its inotify queue), ``RemoveWatcher`` ends it.
A watcher belongs to the sandbox that created it, and a sandbox holds at most
``limits.E2B_WATCHERS_PER_SANDBOX`` (RESOURCE_EXHAUSTED beyond).

``create_files_app`` (HTTP ``/files``) lives in ``files``; both apps are built by ``clawpot.e2b.envd.app``.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from protobuf import Oneof
from starlette.types import ASGIApp

from clawpot import limits
from clawpot.agent_client import AgentClient, RemoteError
from clawpot.agent_client.fs import Watch, WatchEvent
from clawpot.e2b.context import E2bContext
from clawpot.e2b.envd import users
from clawpot.e2b.envd.entries import entry_info, filesystem_event
from clawpot.e2b.envd.files import create_files_app
from clawpot.e2b.envd.gen.filesystem import filesystem_pb as pb
from clawpot.e2b.envd.gen.filesystem.filesystem_connect import FilesystemASGIApplication
from clawpot.e2b.envd.guest import agent_for, connect_error
from clawpot.e2b.envd.process import _keepalive_interval, sandbox_id

if TYPE_CHECKING:
    from connectrpc.request import RequestContext

__all__ = ["FilesystemService", "create_files_app", "create_filesystem_app", "fs_error"]

T = TypeVar("T")

# The OS errors behind the agent's ``io_error`` that envd answers with a code the SDK tells apart.
_ERRNO_CODES = {
    "ENOENT": Code.NOT_FOUND,
    "EEXIST": Code.ALREADY_EXISTS,
    "ENOTDIR": Code.INVALID_ARGUMENT,
    "EISDIR": Code.INVALID_ARGUMENT,
    "ENAMETOOLONG": Code.INVALID_ARGUMENT,
    "ELOOP": Code.FAILED_PRECONDITION,
    "EACCES": Code.PERMISSION_DENIED,
    "EPERM": Code.PERMISSION_DENIED,
    "ENOSPC": Code.RESOURCE_EXHAUSTED,
    "EDQUOT": Code.RESOURCE_EXHAUSTED,
}


def fs_error(
    exc: BaseException, sid: str, link: Any = None, agent: AgentClient | None = None
) -> ConnectError:
    """The ConnectError for a failed filesystem call (``guest.connect_error`` for all but the agent's
    answers about files and users)."""
    if isinstance(exc, RemoteError):
        if exc.code == "unknown_user":
            return ConnectError(Code.UNAUTHENTICATED, f"invalid username: {exc.message}")
        if exc.errno in _ERRNO_CODES:
            return ConnectError(_ERRNO_CODES[exc.errno], exc.message)
    return connect_error(exc, sid, link, agent)


@dataclass
class _Watcher:
    sandbox: str
    watch: Watch


def create_filesystem_app(ctx: E2bContext, *, default_user: str = limits.E2B_DEFAULT_USER) -> ASGIApp:
    return FilesystemASGIApplication(FilesystemService(ctx, default_user))  # type: ignore[arg-type]


class FilesystemService:
    """Implements the generated ``filesystem_connect.Filesystem`` protocol."""

    def __init__(self, ctx: E2bContext, default_user: str = limits.E2B_DEFAULT_USER) -> None:
        self._ctx = ctx
        self._default_user = default_user
        self._watchers: dict[str, _Watcher] = {}

    # --- plumbing --------------------------------------------------------------------------------------

    def _user(self, ctx: RequestContext[Any, Any]) -> str:
        try:
            return users.username(ctx.request_headers, self._default_user)
        except ValueError as exc:
            raise ConnectError(Code.UNAUTHENTICATED, str(exc)) from None

    async def _call(
        self, ctx: RequestContext[Any, Any], call: Callable[[AgentClient, str], Awaitable[T]]
    ) -> T:
        """Run one agent call for the request's sandbox and user, within the request's timeout (or the
        agent budget when it has none), failures mapped as envd maps them."""
        sid = sandbox_id(ctx)
        user = self._user(ctx)
        agent, link = await agent_for(self._ctx, sid)
        budget = ctx.timeout_ms / 1000 if ctx.timeout_ms else link.budget(None)
        try:
            async with asyncio.timeout(budget):
                return await call(agent, user)
        except BaseException as exc:
            raise fs_error(exc, sid, link, agent) from exc

    # --- unary calls -----------------------------------------------------------------------------------

    async def stat(self, request: pb.StatRequest, ctx: RequestContext[Any, Any]) -> pb.StatResponse:
        entry = await self._call(ctx, lambda agent, user: agent.stat(_path(request.path), user=user))
        return pb.StatResponse(entry=entry_info(entry))

    async def make_dir(self, request: pb.MakeDirRequest, ctx: RequestContext[Any, Any]) -> pb.MakeDirResponse:
        entry = await self._call(ctx, lambda agent, user: agent.make_dir(_path(request.path), user=user))
        return pb.MakeDirResponse(entry=entry_info(entry))

    async def move(self, request: pb.MoveRequest, ctx: RequestContext[Any, Any]) -> pb.MoveResponse:
        entry = await self._call(
            ctx,
            lambda agent, user: agent.move(_path(request.source), _path(request.destination), user=user),
        )
        return pb.MoveResponse(entry=entry_info(entry))

    async def remove(self, request: pb.RemoveRequest, ctx: RequestContext[Any, Any]) -> pb.RemoveResponse:
        await self._call(ctx, lambda agent, user: agent.remove(_path(request.path), user=user))
        return pb.RemoveResponse()

    async def list_dir(self, request: pb.ListDirRequest, ctx: RequestContext[Any, Any]) -> pb.ListDirResponse:
        depth = request.depth or 1  # envd: 0 means the directory's own entries
        listing = await self._call(
            ctx, lambda agent, user: agent.list_dir(_path(request.path), depth=depth, user=user)
        )
        if listing.truncated:
            raise ConnectError(
                Code.RESOURCE_EXHAUSTED,
                f"{request.path or '~'} holds more than {limits.E2B_LIST_MAX_ENTRIES} entries "
                f"at depth {depth}: list a smaller depth or a subdirectory",
            )
        return pb.ListDirResponse(entries=[entry_info(e) for e in listing.entries])

    # --- watchers --------------------------------------------------------------------------------------

    async def _open_watch(
        self, ctx: RequestContext[Any, Any], path: str, recursive: bool, include_entry: bool
    ) -> Watch:
        sid = sandbox_id(ctx)
        self._prune()
        if sum(1 for w in self._watchers.values() if w.sandbox == sid) >= limits.E2B_WATCHERS_PER_SANDBOX:
            raise ConnectError(
                Code.RESOURCE_EXHAUSTED,
                f"sandbox {sid} has {limits.E2B_WATCHERS_PER_SANDBOX} watchers: remove one first",
            )
        return await self._call(
            ctx,
            lambda agent, user: agent.watch(
                _path(path), user=user, recursive=recursive, include_entry=include_entry
            ),
        )

    def _prune(self) -> None:
        """Forget watchers whose stream ended (agent gone, VM deleted)."""
        for wid in [wid for wid, w in self._watchers.items() if w.watch.closed]:
            del self._watchers[wid]

    def _watcher(self, ctx: RequestContext[Any, Any], watcher_id: str) -> _Watcher:
        watcher = self._watchers.get(watcher_id)
        if watcher is None or watcher.sandbox != sandbox_id(ctx):
            raise ConnectError(Code.NOT_FOUND, f"watcher with id {watcher_id[:64]} not found")
        return watcher

    async def create_watcher(
        self, request: pb.CreateWatcherRequest, ctx: RequestContext[Any, Any]
    ) -> pb.CreateWatcherResponse:
        watch = await self._open_watch(ctx, request.path, request.recursive, request.include_entry)
        watcher_id = "w" + secrets.token_hex(8)
        self._watchers[watcher_id] = _Watcher(sandbox_id(ctx), watch)
        return pb.CreateWatcherResponse(watcher_id=watcher_id)

    async def get_watcher_events(
        self, request: pb.GetWatcherEventsRequest, ctx: RequestContext[Any, Any]
    ) -> pb.GetWatcherEventsResponse:
        watcher = self._watcher(ctx, request.watcher_id)
        try:
            events = await watcher.watch.sync()
        except BaseException as exc:
            watcher.watch.close()
            self._watchers.pop(request.watcher_id, None)
            raise fs_error(exc, watcher.sandbox) from exc
        return pb.GetWatcherEventsResponse(events=[filesystem_event(e) for e in events])

    async def remove_watcher(
        self, request: pb.RemoveWatcherRequest, ctx: RequestContext[Any, Any]
    ) -> pb.RemoveWatcherResponse:
        watcher = self._watcher(ctx, request.watcher_id)
        del self._watchers[request.watcher_id]
        watcher.watch.close()
        return pb.RemoveWatcherResponse()

    async def watch_dir(
        self, request: pb.WatchDirRequest, ctx: RequestContext[Any, Any]
    ) -> AsyncIterator[pb.WatchDirResponse]:
        """start, then events as they come, keepalives while there are none; ends when the client goes
        away or at the request's timeout (DEADLINE_EXCEEDED), and the watch with it."""
        sid = sandbox_id(ctx)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ctx.timeout_ms / 1000 if ctx.timeout_ms else None
        watch = await self._open_watch(ctx, request.path, request.recursive, request.include_entry)
        key = "stream-" + secrets.token_hex(8)
        self._watchers[key] = _Watcher(sid, watch)  # counts against the sandbox's bound while it lasts
        # Connect notices a client that went away only when the next message is sent: keepalives at
        # least this often end an abandoned stream (and free its watch) within about a second.
        interval = min(_keepalive_interval(ctx), limits.E2B_WATCH_STREAM_LIVENESS)
        pending: asyncio.Future[WatchEvent] | None = None
        try:
            yield _watch_event("start", pb.WatchDirResponse.StartEvent())
            while True:
                if pending is None:
                    pending = asyncio.ensure_future(anext(watch))
                wait = interval if deadline is None else min(interval, deadline - loop.time())
                if wait <= 0:
                    raise ConnectError(Code.DEADLINE_EXCEEDED, "the watch's timeout passed")
                done, _ = await asyncio.wait({pending}, timeout=wait)
                if not done:
                    yield _watch_event("keepalive", pb.WatchDirResponse.KeepAlive())
                    continue
                try:
                    event = pending.result()
                except BaseException as exc:
                    raise fs_error(exc, sid) from exc
                pending = None
                yield _watch_event("filesystem", filesystem_event(event))
        finally:
            if pending is not None and not pending.done():
                pending.cancel()
                with contextlib.suppress(BaseException):
                    await pending
            watch.close()
            self._watchers.pop(key, None)


def _watch_event(field: str, value: Any) -> pb.WatchDirResponse:
    oneof: Any = Oneof(field, value)
    return pb.WatchDirResponse(event=oneof)


def _path(path: str) -> str:
    """envd resolves an empty path to the user's home."""
    return path or "~"
