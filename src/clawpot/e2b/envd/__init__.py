"""The in-sandbox API (E2B's envd) as the SDK speaks it, served on the host: requests carrying
``E2b-Sandbox-Id`` (routed here by ``clawpot.e2b.app``).

PLACEHOLDER (the e2bapi skeleton): the envd helpers replace this module with the Connect-RPC services
(``process.Process``, ``filesystem.Filesystem``) and the HTTP ``/files``, ``/health`` and ``/envs``
endpoints, translated to Clawpot's agent protocol. The contract they keep: ``create_envd_app(ctx)``
returns an ASGI app; ``ctx`` (``clawpot.e2b.context.E2bContext``) gives ``ctx.sandbox(id)`` (the VM and
its ``SandboxAttrs``: ``envd_access_token`` for ``secure`` sandboxes, ``env_vars``), ``ctx.service``
and ``ctx.node``. This placeholder answers ``GET /health`` for a running sandbox (204), 502 for a
missing or not running one (as E2B's edge does: the SDK's ``is_running()`` is then False), and 501
otherwise, so no SDK call hangs.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from clawpot import errors
from clawpot.e2b import errors as e2b_errors
from clawpot.e2b.context import E2bContext
from clawpot.vm.state import VmState


def create_envd_app(ctx: E2bContext) -> ASGIApp:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        sandbox_id = Headers(scope=scope).get("e2b-sandbox-id", "")
        try:
            sandbox = ctx.sandbox(sandbox_id)
        except errors.NotFound as exc:
            # E2B's edge answers a missing sandbox with 502 and this body; the SDK maps it.
            await e2b_errors.error_response(502, str(exc))(scope, receive, send)
            return
        if sandbox.view.record.state is not VmState.RUNNING:
            # A paused (or starting) sandbox's envd does not answer: 502, as E2B's edge says it, so the
            # SDK's is_running() is False and calls fail at once instead of hanging.
            message = f"sandbox {sandbox.id} is {sandbox.view.record.state}, not running"
            await e2b_errors.error_response(502, message)(scope, receive, send)
            return
        if scope["path"] == "/health":
            await Response(status_code=204)(scope, receive, send)
            return
        await e2b_errors.error_response(501, "envd is not served yet")(scope, receive, send)

    return app
