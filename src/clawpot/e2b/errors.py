"""E2B's error shape: ``{"code": <http status>, "message": "..."}`` with that status, and the mapping
from ``clawpot.errors`` kinds to it (the one place, as the gRPC servicer's table is for gRPC).

The SDK reads ``message`` and raises by status: 401 ``AuthenticationException``, 404
``NotFoundException`` (sandbox calls), 429 ``RateLimitException``, others ``SandboxException``.
Every error carries ``Should-Retry: false``: the SDK retries 429/502/503/504 without it, which would
only repeat a refusal that will not change within the call.
"""

from __future__ import annotations

import logging

from starlette.responses import JSONResponse

from clawpot import errors

log = logging.getLogger(__name__)

_STATUS: tuple[tuple[type[errors.ServerError], int], ...] = (
    (errors.InvalidArgument, 400),
    (errors.NotFound, 404),
    (errors.AlreadyExists, 409),
    (errors.FailedPrecondition, 409),
    (errors.ResourceExhausted, 429),  # E2B answers 429 when a team's sandbox limit is reached
    (errors.Unavailable, 503),
    (errors.DeadlineExceeded, 504),
)


def error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse(
        {"code": status, "message": errors.one_line(message)},
        status_code=status,
        headers={"Should-Retry": "false"},
    )


def status_of(exc: errors.ServerError) -> int:
    for kind, status in _STATUS:
        if isinstance(exc, kind):
            return status
    return 500


def from_exception(exc: BaseException) -> JSONResponse:
    """The response for a failure: its kind's status, or 500 for a bug (logged with its traceback)."""
    known = errors.translate(exc)
    if known is None:
        log.exception("E2B API: unexpected error", exc_info=exc)
        return error_response(500, f"internal error: {exc}")
    return error_response(status_of(known), str(known))
