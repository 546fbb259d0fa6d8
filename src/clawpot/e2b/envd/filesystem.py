"""``filesystem.Filesystem`` and HTTP ``/files`` (E2B's envd): PLACEHOLDER, owned by the envfs work.

The contract with ``clawpot.e2b.envd.app``: ``create_filesystem_app(ctx)`` returns the ASGI app that
serves ``/filesystem.Filesystem/*`` (Connect), ``create_files_app(ctx)`` the one that serves ``/files``.
Both get requests whose sandbox exists and whose access token was checked (``/files`` requests carrying
a ``signature`` query parameter are passed without the token: verifying the signature is this module's
job). Until the real services land, every Filesystem method answers UNIMPLEMENTED and ``/files`` 501.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from clawpot.e2b import errors as e2b_errors
from clawpot.e2b.context import E2bContext
from clawpot.e2b.envd.gen.filesystem.filesystem_connect import Filesystem, FilesystemASGIApplication


class _Unimplemented(Filesystem):
    """Every method of the generated protocol's defaults: UNIMPLEMENTED."""


def create_filesystem_app(ctx: E2bContext) -> ASGIApp:
    return FilesystemASGIApplication(_Unimplemented())


def create_files_app(ctx: E2bContext) -> ASGIApp:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await e2b_errors.error_response(501, "/files is not served yet")(scope, receive, send)

    return app
