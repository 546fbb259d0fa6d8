"""The envd ASGI app: every request for a sandbox (``E2b-Sandbox-Id``) passes here first.

1. The sandbox must exist: otherwise 502 ``The sandbox ... was not found``, the answer of E2B's edge
   proxy, which the SDK turns into ``SandboxNotRunningException`` (a Connect client reads a plain 502
   as UNAVAILABLE with that message; ``/health`` as "not running"). One that is not running (paused)
   gets 502 too, naming its state.
2. A ``secure`` sandbox needs ``X-Access-Token`` (its envd access token, compared in constant time),
   except ``/health`` (open in envd too) and ``/files`` with a ``signature`` (checked by ``/files``).
   A wrong or missing token: 401, the SDK's ``AuthenticationException``.
3. Routing: ``/process.Process/*`` → ``process.ProcessService`` (Connect), ``/filesystem.Filesystem/*``
   and ``/files`` → ``filesystem``, ``GET /health`` → 204, ``GET /envs`` →
   the sandbox's ``envVars``.
"""

from __future__ import annotations

import hmac
from urllib.parse import parse_qs

from starlette.datastructures import Headers
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from clawpot import errors, limits
from clawpot.e2b import errors as e2b_errors
from clawpot.e2b.context import E2bContext, Sandbox
from clawpot.e2b.envd import filesystem
from clawpot.e2b.envd.gen.process.process_connect import ProcessASGIApplication
from clawpot.e2b.envd.guest import sandbox_gone_message
from clawpot.e2b.envd.process import SANDBOX_HEADER, ProcessService, watch_disconnect
from clawpot.vm.state import VmState

ACCESS_TOKEN_HEADER = "x-access-token"
PROCESS_PREFIX = "/process.Process/"
FILESYSTEM_PREFIX = "/filesystem.Filesystem/"


def _token_ok(sandbox: Sandbox, headers: Headers, scope: Scope) -> bool:
    expected = sandbox.attrs.envd_access_token
    if expected is None or scope["path"] == "/health":
        return True
    if scope["path"] == "/files" and "signature" in parse_qs(
        scope.get("query_string", b"").decode("latin-1")
    ):
        return True  # a signed URL: /files checks the signature
    given = headers.get(ACCESS_TOKEN_HEADER, "")
    return hmac.compare_digest(given.encode(), expected.encode())


def create_envd_app(ctx: E2bContext, *, default_user: str = limits.E2B_DEFAULT_USER) -> ASGIApp:
    """``default_user``: who runs what names no user (E2B's ``user``; tests on a host agent: root)."""
    process_app = watch_disconnect(ProcessASGIApplication(ProcessService(ctx, default_user)))  # type: ignore[arg-type]
    filesystem_app = filesystem.create_filesystem_app(ctx, default_user=default_user)
    files_app = filesystem.create_files_app(ctx, default_user=default_user)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        headers = Headers(scope=scope)
        sandbox_id = headers.get(SANDBOX_HEADER, "")
        try:
            sandbox = ctx.sandbox(sandbox_id)
        except errors.NotFound:
            await e2b_errors.error_response(502, sandbox_gone_message(sandbox_id))(scope, receive, send)
            return
        state = sandbox.view.record.state
        if state is not VmState.RUNNING:
            # A paused (or starting, stopping) sandbox's envd does not answer: 502, as E2B's edge says
            # it, so the SDK's is_running() is False and calls fail at once instead of hanging.
            message = f"The sandbox {sandbox.id} is {state.value.lower()}, not running"
            await e2b_errors.error_response(502, message)(scope, receive, send)
            return
        if not _token_ok(sandbox, headers, scope):
            await e2b_errors.error_response(401, "invalid or missing X-Access-Token")(scope, receive, send)
            return
        path = scope["path"]
        if path.startswith(PROCESS_PREFIX):
            await process_app(scope, receive, send)
        elif path.startswith(FILESYSTEM_PREFIX):
            await filesystem_app(scope, receive, send)
        elif path == "/files":
            await files_app(scope, receive, send)
        elif path == "/health":
            await Response(status_code=204)(scope, receive, send)
        elif path == "/envs" and scope["method"] == "GET":
            await JSONResponse(sandbox.attrs.env_vars)(scope, receive, send)
        else:
            await e2b_errors.error_response(404, f"no envd endpoint {path[:100]}")(scope, receive, send)

    return app
