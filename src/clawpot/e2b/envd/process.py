"""``process.Process`` (E2B's envd) over Connect, translated to the agent's managed processes.

Start and Connect stream a ``ProcessEvent``: ``start`` {pid}, ``data`` (stdout / stderr, or ``pty`` for
a terminal), ``keepalive`` while the process is silent, and ``end`` {exit_code, exited, status, error}
as envd (Go's ``os.ProcessState``) words them: ``exit status 3`` / ``signal: killed``, exit code -1 for
a signal. A stream that ends (the client went away, or its ``timeout`` passed) detaches: the process
runs on in the guest, as in envd. The request's Connect timeout (the SDK's ``timeout``) is the
process's lifetime: the agent kills its process group just before it passes and the stream ends with
DEADLINE_EXCEEDED, which the SDK raises as ``TimeoutException``.

The process is started as the user of ``Authorization: Basic`` (``users.username``), with envd's
environment: PATH, HOME, USER, LOGNAME, the sandbox's ``envVars``, then the request's ``envs``.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from protobuf import Oneof
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from clawpot import errors, limits
from clawpot.agent_client import AgentClient, ExecEvent, ExecProcess, Exited, ExitStatus
from clawpot.agent_client.procs import ProcSpec, Selector
from clawpot.e2b.context import E2bContext
from clawpot.e2b.envd import users
from clawpot.e2b.envd.gen.process import process_pb as pb
from clawpot.e2b.envd.guest import agent_for, connect_error, sandbox_gone_message
from clawpot.service import validate

if TYPE_CHECKING:
    from connectrpc.request import RequestContext

SANDBOX_HEADER = "e2b-sandbox-id"
OpenProcess = Callable[[AgentClient], Awaitable[ExecProcess]]
AgentCall = Callable[[AgentClient], Awaitable[None]]
KEEPALIVE_HEADER = "keepalive-ping-interval"

_SIGNALS = {pb.Signal.SIGKILL: signal.SIGKILL, pb.Signal.SIGTERM: signal.SIGTERM}


def sandbox_id(ctx: RequestContext[Any, Any]) -> str:
    return str(ctx.request_headers.get(SANDBOX_HEADER, ""))


def _selector(msg: pb.ProcessSelector | None) -> Selector:
    chosen = msg.selector if msg is not None else None
    if chosen is None:
        raise ConnectError(Code.INVALID_ARGUMENT, "a process selector (pid or tag) is required")
    if chosen.field == "pid":
        return Selector(pid=int(chosen.value))
    return Selector(tag=str(chosen.value))


def _keepalive_interval(ctx: RequestContext[Any, Any]) -> float:
    try:
        asked = float(ctx.request_headers.get(KEEPALIVE_HEADER, ""))
    except ValueError:
        asked = limits.E2B_KEEPALIVE_MAX_INTERVAL
    return max(1.0, min(asked, limits.E2B_KEEPALIVE_MAX_INTERVAL))


def end_event(status: ExitStatus) -> pb.ProcessEvent.EndEvent:
    """The end as envd reports it (Go's ProcessState): a signal is exit code -1, ``signal: killed``."""
    if status.signal is not None:
        try:
            name = signal.strsignal(status.signal) or f"signal {status.signal}"
        except ValueError:
            name = f"signal {status.signal}"
        text = f"signal: {name.lower()}"
        return pb.ProcessEvent.EndEvent(exit_code=-1, exited=False, status=text, error=text)
    code = status.exit_code if status.exit_code is not None else -1
    text = f"exit status {code}"
    return pb.ProcessEvent.EndEvent(exit_code=code, exited=True, status=text, error=text if code else None)


def _event(oneof: Any) -> pb.ProcessEvent:
    return pb.ProcessEvent(event=oneof)


_KEEPALIVE = _event(Oneof("keepalive", pb.ProcessEvent.KeepAlive()))


# Set per request by ``watch_disconnect``: fires when the client goes away, so a Start/Connect stream
# detaches at once and what the process writes next waits in the agent's ring for the next Connect,
# instead of being pulled into a stream nobody reads (connectrpc itself only notices at the next send).
_client_gone: ContextVar[asyncio.Event | None] = ContextVar("envd_client_gone", default=None)


def watch_disconnect(app: ASGIApp) -> ASGIApp:
    """ASGI wrapper: note the client's ``http.disconnect`` for the streams of this request."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        gone = asyncio.Event()

        async def watched() -> Message:
            message = await receive()
            if message["type"] == "http.disconnect":
                gone.set()
            return message

        token = _client_gone.set(gone)
        try:
            await app(scope, watched, send)
        finally:
            _client_gone.reset(token)

    return wrapped


def _kill_after(remaining: float) -> float:
    """When the agent kills a process whose request has ``remaining`` seconds: a little before the
    client's deadline, so that when the SDK raises ``TimeoutException`` the process is already gone (a
    ``commands.list()`` right after does not show it); the stream still ends with DEADLINE_EXCEEDED."""
    return max(remaining - min(limits.E2B_TIMEOUT_KILL_MARGIN, remaining / 10), 0.001)


def _deadline_exceeded() -> ConnectError:
    return ConnectError(Code.DEADLINE_EXCEEDED, "the request's timeout passed: the process was killed")


async def process_events(
    proc: ExecProcess, interval: float, deadline: float | None = None
) -> AsyncIterator[pb.ProcessEvent]:
    """start, data..., end of one agent process stream, with keepalives every ``interval`` seconds of
    silence. At ``deadline`` (loop time: the request's Connect timeout, which the agent enforces by
    killing the process) the stream ends with DEADLINE_EXCEEDED, as envd's does, rather than with the
    end of the killed process: the SDK raises ``TimeoutException``. Closing the iterator detaches from
    the process (it runs on)."""
    assert proc.pid is not None
    loop = asyncio.get_running_loop()
    yield _event(Oneof("start", pb.ProcessEvent.StartEvent(pid=proc.pid)))
    events = aiter(proc)
    pending: asyncio.Future[ExecEvent] | None = None
    gone = _client_gone.get()
    gone_wait = asyncio.ensure_future(gone.wait()) if gone is not None else None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(events))
            wait = interval if deadline is None else min(interval, deadline - loop.time())
            if wait <= 0:
                raise _deadline_exceeded()
            waiting = {pending} | ({gone_wait} if gone_wait else set())
            done, _ = await asyncio.wait(waiting, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            if gone_wait is not None and gone_wait.done():
                return  # the client went away: detach, leave the output to the next Connect
            if not done:
                if deadline is not None and loop.time() >= deadline:
                    raise _deadline_exceeded()
                yield _KEEPALIVE
                continue
            event: ExecEvent = pending.result()
            pending = None
            if isinstance(event, Exited):
                if event.status.timed_out:
                    raise _deadline_exceeded()
                yield _event(Oneof("end", end_event(event.status)))
                return
            output: Any = Oneof("pty" if proc.pty else event.stream, event.data)
            yield _event(Oneof("data", pb.ProcessEvent.DataEvent(output=output)))
    finally:
        if gone_wait is not None:
            gone_wait.cancel()
        if pending is not None and not pending.done():
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
        proc.cancel()  # detach (no-op once it has ended)


class ProcessService:
    """Implements the generated ``process_connect.Process`` protocol."""

    def __init__(self, ctx: E2bContext, default_user: str = limits.E2B_DEFAULT_USER) -> None:
        self._ctx = ctx
        self._default_user = default_user
        self._open_streams: dict[str, int] = {}  # sandbox id -> Start/Connect streams open now

    async def _stream(
        self,
        ctx: RequestContext[Any, Any],
        proc_of: Callable[[AgentClient], Awaitable[ExecProcess]],
        sid: str,
    ) -> AsyncIterator[pb.ProcessEvent]:
        remaining = ctx.timeout_ms
        deadline = asyncio.get_running_loop().time() + remaining / 1000 if remaining is not None else None
        # Each open stream holds one of the agent connection's sessions: leave some for unary calls
        # (kill, send_stdin, list), so a sandbox full of waited-on commands can still be controlled.
        if self._open_streams.get(sid, 0) >= limits.E2B_MAX_PROCESS_STREAMS:
            raise ConnectError(
                Code.RESOURCE_EXHAUSTED,
                f"at most {limits.E2B_MAX_PROCESS_STREAMS} command streams at once per sandbox: "
                "disconnect or wait for some first",
            )
        self._open_streams[sid] = self._open_streams.get(sid, 0) + 1
        try:
            agent, link = await agent_for(self._ctx, sid)
            try:
                # The agent answers at once (INFO after the spawn): its budget bounds a wedged or hostile one.
                async with asyncio.timeout(link.budget(None)):
                    proc = await proc_of(agent)
            except BaseException as exc:
                raise connect_error(exc, sid, link, agent) from exc
            try:
                async for event in process_events(proc, _keepalive_interval(ctx), deadline):
                    yield event
            except ConnectError:
                raise
            except (Exception, TimeoutError) as exc:
                raise connect_error(exc, sid, link, agent) from exc
        finally:
            left = self._open_streams.pop(sid) - 1
            if left:
                self._open_streams[sid] = left

    async def start(
        self, request: pb.StartRequest, ctx: RequestContext[pb.StartRequest, pb.StartResponse]
    ) -> AsyncIterator[pb.StartResponse]:
        sid = sandbox_id(ctx)
        config = request.process or pb.ProcessConfig()
        if not config.cmd:
            raise ConnectError(Code.INVALID_ARGUMENT, "process.cmd is required")
        try:
            user = users.username(ctx.request_headers, self._default_user)
        except ValueError as exc:
            raise ConnectError(Code.UNAUTHENTICATED, str(exc)) from None
        try:
            sandbox = self._ctx.sandbox(sid)
        except errors.NotFound:
            raise ConnectError(Code.UNAVAILABLE, sandbox_gone_message(sid)) from None
        size = request.pty.size if request.pty is not None else None
        remaining = ctx.timeout_ms
        argv, env = [config.cmd, *config.args], {**sandbox.attrs.env_vars, **dict(config.envs)}
        cwd = config.cwd if config.has_field("cwd") and config.cwd else None
        try:
            # The bounds of every exec (argv 32 KiB, env 16 KiB, ...): what the agent takes in one frame.
            validate.exec_request(argv, env, None, None)
            if cwd is not None and (len(cwd.encode()) > limits.MAX_GUEST_PATH_BYTES or "\0" in cwd):
                raise errors.InvalidArgument(f"cwd is not a usable path: {errors.quote(cwd)}")
        except errors.InvalidArgument as exc:
            raise ConnectError(Code.INVALID_ARGUMENT, str(exc)) from None
        spec = ProcSpec(
            argv=argv,
            env=env,
            cwd=cwd,
            user=user,
            pty=None if request.pty is None else (size.rows or 24, size.cols or 80) if size else (24, 80),
            stdin=request.stdin if request.has_field("stdin") else True,
            timeout=_kill_after(remaining / 1000) if remaining is not None else None,
            tag=request.tag if request.has_field("tag") else None,
        )
        async for event in self._stream(ctx, lambda agent: agent.proc_start(spec), sid):
            yield pb.StartResponse(event=event)

    async def connect(
        self, request: pb.ConnectRequest, ctx: RequestContext[pb.ConnectRequest, pb.ConnectResponse]
    ) -> AsyncIterator[pb.ConnectResponse]:
        sid = sandbox_id(ctx)
        selector = _selector(request.process)
        async for event in self._stream(ctx, lambda agent: agent.proc_attach(selector), sid):
            yield pb.ConnectResponse(event=event)

    async def list(
        self, request: pb.ListRequest, ctx: RequestContext[pb.ListRequest, pb.ListResponse]
    ) -> pb.ListResponse:
        sid = sandbox_id(ctx)
        agent, link = await agent_for(self._ctx, sid)
        try:
            procs = await agent.proc_list()
        except BaseException as exc:
            raise connect_error(exc, sid, link, agent) from exc
        return pb.ListResponse(
            processes=[
                pb.ProcessInfo(
                    config=pb.ProcessConfig(
                        cmd=p.argv[0] if p.argv else "", args=p.argv[1:], envs=p.env, cwd=p.cwd
                    ),
                    pid=p.pid,
                    tag=p.tag,
                )
                for p in procs
            ]
        )

    async def _call(
        self, ctx: RequestContext[Any, Any], call: Callable[[AgentClient], Awaitable[None]]
    ) -> None:
        sid = sandbox_id(ctx)
        agent, link = await agent_for(self._ctx, sid)
        try:
            await call(agent)
        except BaseException as exc:
            raise connect_error(exc, sid, link, agent) from exc

    async def send_input(
        self, request: pb.SendInputRequest, ctx: RequestContext[pb.SendInputRequest, pb.SendInputResponse]
    ) -> pb.SendInputResponse:
        selector = _selector(request.process)
        data = request.input.input.value if request.input is not None and request.input.input else b""
        await self._call(ctx, lambda agent: agent.proc_input(selector, bytes(data)))
        return pb.SendInputResponse()

    async def stream_input(
        self,
        request: AsyncIterator[pb.StreamInputRequest],
        ctx: RequestContext[pb.StreamInputRequest, pb.StreamInputResponse],
    ) -> pb.StreamInputResponse:
        first = await anext(aiter(request), None)
        start = first.event.value if first is not None and first.event is not None else None
        if first is None or first.event is None or first.event.field != "start":
            raise ConnectError(Code.INVALID_ARGUMENT, "StreamInput must begin with a start event")
        selector = _selector(start.process)  # type: ignore[union-attr]

        async def chunks() -> AsyncIterator[bytes]:
            async for message in request:
                event = message.event
                if event is not None and event.field == "data" and event.value.input is not None:
                    chosen = event.value.input.input
                    if chosen is not None and chosen.value:
                        yield bytes(chosen.value)

        await self._call(ctx, lambda agent: agent.proc_input(selector, chunks()))
        return pb.StreamInputResponse()

    async def send_signal(
        self, request: pb.SendSignalRequest, ctx: RequestContext[pb.SendSignalRequest, pb.SendSignalResponse]
    ) -> pb.SendSignalResponse:
        selector = _selector(request.process)
        signo = _SIGNALS.get(request.signal)
        if signo is None:
            raise ConnectError(Code.UNIMPLEMENTED, f"invalid signal: {request.signal}")
        await self._call(ctx, lambda agent: agent.proc_signal(selector, signo))
        return pb.SendSignalResponse()

    async def close_stdin(
        self, request: pb.CloseStdinRequest, ctx: RequestContext[pb.CloseStdinRequest, pb.CloseStdinResponse]
    ) -> pb.CloseStdinResponse:
        selector = _selector(request.process)
        await self._call(ctx, lambda agent: agent.proc_close_stdin(selector))
        return pb.CloseStdinResponse()

    async def update(
        self, request: pb.UpdateRequest, ctx: RequestContext[pb.UpdateRequest, pb.UpdateResponse]
    ) -> pb.UpdateResponse:
        selector = _selector(request.process)
        size = request.pty.size if request.pty is not None else None
        if size is not None:
            rows, cols = size.rows, size.cols
            if not (0 < rows < 65536 and 0 < cols < 65536):
                raise ConnectError(Code.INVALID_ARGUMENT, "pty rows and cols must be in [1, 65535]")
            await self._call(ctx, lambda agent: agent.proc_resize(selector, rows, cols))
        return pb.UpdateResponse()
