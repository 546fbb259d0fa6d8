"""Request bodies of E2B's control plane, parsed and bounded before anything happens.

pydantic models named and shaped as in E2B's OpenAPI spec (``NewSandbox``, ``SandboxTimeoutRequest``,
...), unknown fields ignored as the real API does. ``read_body`` reads at most
``limits.E2B_MAX_BODY_BYTES`` and turns any parse or validation failure into ``InvalidArgument`` (400
in E2B's shape) with one short line. Options Clawpot cannot honour (egress rules, volumes, MCP,
auto-resume, no internet) are refused rather than silently dropped: code that relies on them must not
run believing it got them.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request

from clawpot import errors, limits
from clawpot.service import validate


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class NewSandbox(_Body):
    """POST /sandboxes (v1: ``secure``) and POST /v2/sandboxes (always secure)."""

    templateID: str = Field(max_length=256)
    timeout: int | None = Field(default=None, ge=0)
    autoPause: bool = False
    secure: bool | None = None
    metadata: dict[str, str] | None = None
    envVars: dict[str, str] | None = None
    allow_internet_access: bool | None = None
    autoResume: dict[str, Any] | None = None
    network: dict[str, Any] | None = None
    mcp: dict[str, Any] | None = None
    volumeMounts: list[Any] | None = None

    def refuse_unsupported(self) -> None:
        if self.allow_internet_access is False:
            raise errors.InvalidArgument("allow_internet_access=false is not supported by this server yet")
        if self.network:
            raise errors.InvalidArgument("network egress rules are not supported by this server")
        if self.mcp:
            raise errors.InvalidArgument("MCP servers are not supported by this server")
        if self.volumeMounts:
            raise errors.InvalidArgument("volume mounts are not supported by this server")
        if self.autoResume and self.autoResume.get("enabled"):
            raise errors.InvalidArgument("autoResume is not supported by this server: resume with connect")
        metadata(self.metadata or {})
        validate.environment(self.envVars or {})


class TimeoutRequest(_Body):
    """POST /sandboxes/{id}/timeout (``SandboxTimeoutRequest``)."""

    timeout: int = Field(ge=0)


class RefreshRequest(_Body):
    """POST /sandboxes/{id}/refreshes (``SandboxRefreshRequest``)."""

    duration: int = Field(default=limits.E2B_DEFAULT_REFRESH_SECONDS, ge=0, le=limits.E2B_MAX_REFRESH_SECONDS)


class ConnectRequest(_Body):
    """POST /sandboxes/{id}/connect (timeout required) and /v2/.../connect (optional; ``memory``)."""

    timeout: int | None = Field(default=None, ge=0)
    memory: bool | None = None  # False: E2B reboots from the filesystem; Clawpot resumes memory only


class ResumeRequest(_Body):
    """POST /sandboxes/{id}/resume (``ResumedSandbox``, deprecated by E2B for connect)."""

    timeout: int = Field(default=limits.E2B_V1_DEFAULT_TIMEOUT, ge=0)
    autoPause: bool | None = None


class PauseRequest(_Body):
    """POST /sandboxes/{id}/pause (``SandboxPauseRequest``)."""

    memory: bool | None = None
    requireHealthyGuest: bool | None = None


def metadata(values: dict[str, str]) -> None:
    if len(values) > limits.E2B_MAX_METADATA_ITEMS:
        raise errors.InvalidArgument(
            f"metadata has {len(values)} entries: at most {limits.E2B_MAX_METADATA_ITEMS}"
        )
    size = sum(
        len(k.encode("utf-8", "surrogatepass")) + len(v.encode("utf-8", "surrogatepass"))
        for k, v in values.items()
    )
    if size > limits.E2B_MAX_METADATA_BYTES:
        raise errors.InvalidArgument(f"metadata takes {size} bytes: at most {limits.E2B_MAX_METADATA_BYTES}")


B = TypeVar("B", bound=_Body)


async def read_body(request: Request, model: type[B], *, required: bool = True) -> B:
    """The request's JSON body as ``model``; an empty body is ``{}`` when not ``required``."""
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limits.E2B_MAX_BODY_BYTES:
            raise errors.InvalidArgument(f"request body larger than {limits.E2B_MAX_BODY_BYTES} bytes")
    if not raw.strip():
        if required:
            raise errors.InvalidArgument("request body is required (JSON)")
        raw = b"{}"
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise errors.InvalidArgument(f"invalid request body: {where}: {first['msg']}") from None
