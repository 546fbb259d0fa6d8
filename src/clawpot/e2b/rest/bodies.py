"""Request bodies of E2B's control plane, parsed and bounded before anything happens.

pydantic models named and shaped as in E2B's OpenAPI spec (``NewSandbox``, ``SandboxTimeoutRequest``,
...), unknown fields ignored as the real API does. ``read_body`` reads at most
``limits.E2B_MAX_BODY_BYTES`` and turns any parse or validation failure into ``InvalidArgument`` (400
in E2B's shape) with one short line. Options Clawpot cannot honour (volumes, MCP, auto-resume, egress
transform rules) are refused rather than silently dropped: code that relies on them must not run
believing it got them. E2B's egress options map onto the VM's egress policy (``Egress``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request

from clawpot import errors, limits
from clawpot.service import validate

# E2B's "all traffic" (e2b.ALL_TRAFFIC): a deny_out holding it makes allow_out an allow list.
ALL_TRAFFIC = "0.0.0.0/0"
# Keys of E2B's SandboxNetworkConfig that change nothing here: public traffic to a sandbox URL (there is
# none; the SDK reaches envd through this server).
_IGNORED_NETWORK_KEYS = frozenset({"allowPublicTraffic"})


@dataclass(frozen=True)
class Egress:
    """A sandbox's egress as Clawpot's policy says it (``create --allow-out/--deny-out/--no-internet``)."""

    allow_out: tuple[str, ...] = ()
    deny_out: tuple[str, ...] = ()
    no_internet: bool = False


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

    def egress(self) -> Egress:
        """E2B's egress options in Clawpot's terms. E2B: ``allowOut`` entries are exceptions to
        ``denyOut`` (allow wins), and ``allow_internet_access=false`` is ``denyOut: [0.0.0.0/0]``.
        Clawpot: a non-empty allow list denies everything else, and a deny entry always wins. So: no
        deny → no policy; a deny of all traffic → the allow list (or no internet when it is empty);
        a partial deny → that deny list, and allow exceptions inside it are refused (not expressible)."""
        net = self.network or {}
        unsupported = sorted(
            k for k, v in net.items() if v and k not in {"allowOut", "denyOut"} | _IGNORED_NETWORK_KEYS
        )
        if unsupported:
            raise errors.InvalidArgument(
                f"network options not supported by this server: {', '.join(unsupported)}"
            )
        allow, deny = _strings(net.get("allowOut"), "allowOut"), _strings(net.get("denyOut"), "denyOut")
        if self.allow_internet_access is False:
            deny = [ALL_TRAFFIC, *deny]
        if not deny:
            return Egress()
        if any(entry.strip() in (ALL_TRAFFIC, "0.0.0.0") for entry in deny):
            return Egress(allow_out=tuple(allow)) if allow else Egress(no_internet=True)
        if allow:
            raise errors.InvalidArgument(
                "allowOut exceptions inside a partial denyOut are not supported: deny all traffic "
                f"({ALL_TRAFFIC}) and list what to allow, or list only what to deny"
            )
        return Egress(deny_out=tuple(deny))

    def refuse_unsupported(self) -> None:
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


class ForkRequest(_Body):
    """POST /sandboxes/{id}/fork (``SandboxForkRequest``: both optional, E2B's defaults)."""

    timeout: int = Field(default=limits.E2B_FORK_DEFAULT_TIMEOUT, ge=0)
    count: int = Field(default=1, ge=1, le=limits.MAX_FORK_COUNT)


class SnapshotRequest(_Body):
    """POST /sandboxes/{id}/snapshots (``SandboxSnapshotRequest``)."""

    name: str | None = Field(default=None, max_length=256)
    memory: bool | None = None  # False: E2B's filesystem-only snapshot, which Clawpot does not take


def _strings(value: Any, name: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise errors.InvalidArgument(f"invalid request body: network.{name}: a list of strings")
    return value


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
