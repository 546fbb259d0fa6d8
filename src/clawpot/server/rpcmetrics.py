"""Every gRPC call counted by method and final status code, timed, and logged as one line: a server
interceptor.

The line (logger ``clawpot.server.rpc``; ``--log-format json`` makes it a JSON object with the fields
``method``, ``code``, ``duration_ms`` and ``vm_id`` when the call names a VM) is INFO for the API's
calls and DEBUG for health checks, which load balancers make every few seconds.

Installed on both gRPC servers (unix sockets and TCP) ahead of the token check, so a call refused
for a missing token is counted too (UNAUTHENTICATED). The status is the one the client sees: OK,
what ``context.abort`` set, CANCELLED when the client went away, UNKNOWN for an escaped exception.
Streams are timed from their first to their last message. Only methods the server serves get their
own label (``known``); anything else a client makes up is counted as ``other``, so no caller can
grow the label set.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc

from clawpot.metrics import instruments

log = logging.getLogger("clawpot.server.rpc")
_QUIET_PREFIX = "/grpc.health.v1.Health/"
_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")

if TYPE_CHECKING:  # generic in the type stubs only
    Context = grpc.aio.ServicerContext[Any, Any]
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
    _Handler = grpc.RpcMethodHandler[Any, Any]
else:
    Context = grpc.aio.ServicerContext
    _Interceptor = grpc.aio.ServerInterceptor
    _Handler = grpc.RpcMethodHandler


def _method_name(full: str) -> str:
    """``/clawpot.v1.VmService/CreateVm`` → ``VmService/CreateVm`` (the package adds nothing)."""
    service, _, method = full.lstrip("/").rpartition("/")
    return f"{service.rpartition('.')[2]}/{method}"


def _code_of(context: Context, exc: BaseException | None) -> str:
    if isinstance(exc, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED.name
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    if exc is not None and not isinstance(exc, grpc.aio.AbortError):
        return grpc.StatusCode.UNKNOWN.name
    if isinstance(code, int):  # some grpc versions hand back the numeric value
        return next((c.name for c in grpc.StatusCode if c.value[0] == code), str(code))
    return grpc.StatusCode.OK.name


def _vm_id(message: Any) -> str:
    """The VM a request (or CreateVm's response) names, if it has an id field that looks like a VM id
    (a client's bad id is not copied into the log: it could hold anything, line breaks included)."""
    for name in ("vm_id", "id"):
        value = getattr(message, name, None)
        if isinstance(value, str) and _ID.fullmatch(value):
            return value
    return ""


@dataclass
class _Call:
    full: str  # /package.Service/Method
    method: str  # the metrics label
    started: float = field(default_factory=time.monotonic)
    vm_id: str = ""

    def done(self, context: Context, exc: BaseException | None) -> None:
        code = _code_of(context, exc)
        seconds = time.monotonic() - self.started
        instruments.RPCS.labels(method=self.method, code=code).inc()
        instruments.RPC_SECONDS.labels(method=self.method).observe(seconds)
        level = logging.DEBUG if self.full.startswith(_QUIET_PREFIX) else logging.INFO
        if log.isEnabledFor(level):
            fields = {"method": self.method, "code": code, "duration_ms": round(seconds * 1000, 1)}
            if self.vm_id:
                fields["vm_id"] = self.vm_id
            text = " ".join(f"{k}={v}" for k, v in fields.items())
            log.log(level, "rpc %s", text, extra={"fields": fields})


def _unary(
    call: Callable[[], _Call], behavior: Callable[..., Awaitable[Any]]
) -> Callable[..., Awaitable[Any]]:
    async def wrapped(request: Any, context: Context) -> Any:
        this = call()
        this.vm_id = _vm_id(request)
        failure: BaseException | None = None
        try:
            response = await behavior(request, context)
            this.vm_id = this.vm_id or _vm_id(response)
            return response
        except BaseException as exc:
            failure = exc
            raise
        finally:
            this.done(context, failure)

    return wrapped


def _streaming(call: Callable[[], _Call], behavior: Callable[..., Any]) -> Callable[..., Any]:
    if not inspect.isasyncgenfunction(behavior):
        return _unary(call, behavior)  # a coroutine that writes with context.write()

    async def wrapped(request: Any, context: Context) -> AsyncIterator[Any]:
        this = call()
        this.vm_id = _vm_id(request)
        failure: BaseException | None = None
        try:
            async for response in behavior(request, context):
                yield response
        except BaseException as exc:
            failure = exc
            raise
        finally:
            this.done(context, failure)

    return wrapped


class RpcMetricsInterceptor(_Interceptor):
    def __init__(self, known: frozenset[str]) -> None:
        self._known = known  # full method names: /package.Service/Method

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[_Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _Handler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        full = handler_call_details.method
        method = _method_name(full) if full in self._known else "other"

        def call() -> _Call:
            return _Call(full, method)

        args = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(_unary(call, handler.unary_unary), **args)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(_streaming(call, handler.unary_stream), **args)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(_unary(call, handler.stream_unary), **args)
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(_streaming(call, handler.stream_stream), **args)
        return handler
