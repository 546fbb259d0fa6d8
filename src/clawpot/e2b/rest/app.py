"""The REST routes of E2B's control plane: parse the request, call the ``Service``, shape the answer
as the SDK parses it. No decisions here beyond E2B's own semantics."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from clawpot.e2b import errors as e2b_errors
from clawpot.e2b.context import E2bContext


async def _health(_request: Request) -> Response:
    return Response(status_code=200)


async def _http_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return e2b_errors.error_response(exc.status_code, exc.detail)


def create_rest_app(ctx: E2bContext) -> Starlette:
    routes = [Route("/health", _health, methods=["GET"])]
    app = Starlette(routes=routes, exception_handlers={HTTPException: _http_error})
    app.state.ctx = ctx
    return app
