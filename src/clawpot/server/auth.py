"""Token authentication for TCP listeners: a gRPC server interceptor.

Every call must carry ``authorization: Bearer <token>`` metadata (what ``grpc.access_token_call_
credentials`` sends), compared with the token in constant time. Health checking stays open (load
balancers and ``grpc_health_probe`` have no token); reflection and the VM API do not. A refused call
gets UNAUTHENTICATED with a one-line message that never echoes what was presented.

Only the TCP server gets this interceptor; the unix-socket server (filesystem permissions are its
authentication) runs without it. A refused call is answered by a handler of the same streaming kind
that reads nothing: its request bytes are never parsed.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health

log = logging.getLogger(__name__)

OPEN_PREFIXES = (f"/{health.SERVICE_NAME}/",)  # grpc.health.v1.Health: Check and Watch
# `clawpot token` prints the token on the server's host; other clients get the same hint.
MISSING = "missing API token: send metadata 'authorization: Bearer TOKEN' (`clawpot token` prints it)"
WRONG = "wrong API token (`clawpot token` prints the right one)"


def check_metadata(metadata: Sequence[tuple[str, str | bytes]] | None, token: str) -> str | None:
    """None if the metadata carries the token, else the reason to refuse (one line, no secrets)."""
    presented = [value for key, value in metadata or () if key == "authorization"]
    if not presented:
        return MISSING
    if len(presented) > 1:
        return "more than one authorization entry in the call's metadata"
    value = presented[0]
    given = value if isinstance(value, bytes) else value.encode("utf-8", errors="replace")
    # compare_digest takes the same time wherever the first difference is (a length mismatch returns
    # at once, but the length of "Bearer " + a 43-character token is no secret).
    if not hmac.compare_digest(given, f"Bearer {token}".encode()):
        return WRONG
    return None


if TYPE_CHECKING:  # generic in the type stubs only
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _Interceptor = grpc.aio.ServerInterceptor


class TokenAuthInterceptor(_Interceptor):
    def __init__(self, token: str, open_prefixes: Sequence[str] = OPEN_PREFIXES) -> None:
        self._token = token
        self._open = tuple(open_prefixes)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        method = handler_call_details.method
        if method.startswith(self._open):
            return await continuation(handler_call_details)
        metadata: Any = handler_call_details.invocation_metadata
        reason = check_metadata(metadata, self._token)
        if reason is None:
            return await continuation(handler_call_details)
        log.debug("refused %s: %s", method, reason)  # debug only: a local user could flood the log
        return _refusal(await continuation(handler_call_details), reason)


def _refusal(handler: grpc.RpcMethodHandler[Any, Any] | None, reason: str) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of the same streaming kind as ``handler`` that aborts with UNAUTHENTICATED."""

    async def refuse(_request: object, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, reason)

    # No deserializers: the caller is not authenticated, so its request bytes are never parsed.
    request_streaming = handler is not None and handler.request_streaming
    response_streaming = handler is not None and handler.response_streaming
    if request_streaming and response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse)
    if request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse)
    if response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse)
    return grpc.unary_unary_rpc_method_handler(refuse)
