"""The E2B front door's root ASGI app: one listener, two APIs, told apart by one header.

The SDK sends ``E2b-Sandbox-Id`` (and ``E2b-Sandbox-Port``) on every request to a sandbox's envd
(``sandbox_url`` mode: ``E2B_SANDBOX_URL`` points at this listener too), and never on control-plane
calls. So: with the header → the envd app (``clawpot.e2b.envd.create_envd_app``), which authenticates
by the sandbox's access token; without it → the REST app (``clawpot.e2b.rest``), behind the API key.

Lifespan events are answered here: neither app has start-up work of its own.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from clawpot.e2b import errors as e2b_errors
from clawpot.e2b.auth import check_api_key
from clawpot.e2b.context import E2bContext
from clawpot.e2b.envd import create_envd_app
from clawpot.e2b.rest import create_rest_app

SANDBOX_ID_HEADER = "e2b-sandbox-id"
# Open without a key, as E2B's own API: a liveness probe for load balancers.
OPEN_PATHS = frozenset({"/health"})


def create_app(ctx: E2bContext) -> ASGIApp:
    rest = create_rest_app(ctx)
    envd = create_envd_app(ctx)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        headers = Headers(scope=scope)
        if SANDBOX_ID_HEADER in headers:
            await envd(scope, receive, send)
            return
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            reason = check_api_key(headers, ctx.token)
            if reason is not None:
                await e2b_errors.error_response(401, reason)(scope, receive, send)
                return
        await rest(scope, receive, send)

    return app


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
