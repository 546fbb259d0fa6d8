"""A sandbox's guest agent, as the envd services reach it, and the one mapping of failures to Connect
codes the SDK understands.

``agent_for`` finds the sandbox's VM (running, not paused) and its connected agent client within the
node's agent budget. ``connect_error`` turns what can go wrong (``clawpot.errors`` kinds from the node,
``GuestError`` from the agent channel) into a ``ConnectError``: the SDK maps UNAVAILABLE with "was not
found" to ``SandboxNotRunningException``, NOT_FOUND to ``NotFoundException`` (``commands.kill`` answers
False on it), INVALID_ARGUMENT to ``InvalidArgumentException``.
"""

from __future__ import annotations

from connectrpc.code import Code
from connectrpc.errors import ConnectError

from clawpot import errors
from clawpot.agent_client import AgentClient, GuestError, RemoteError
from clawpot.e2b.context import E2bContext
from clawpot.node.agents import AgentLink, one_line

# The SDK recognises a sandbox that is gone by this phrase in a 502 / UNAVAILABLE message.
NOT_FOUND_PHRASE = "was not found"

_REMOTE_CODES = {
    "not_found": Code.NOT_FOUND,
    "bad_request": Code.INVALID_ARGUMENT,
    "spawn_failed": Code.INVALID_ARGUMENT,
    "not_supported": Code.UNIMPLEMENTED,
    "too_many_sessions": Code.RESOURCE_EXHAUSTED,  # the agent's concurrent streams (64 per connection)
}


def sandbox_gone_message(sandbox_id: str) -> str:
    return f"The sandbox {errors.quote(sandbox_id)} {NOT_FOUND_PHRASE}"


async def agent_for(ctx: E2bContext, sandbox_id: str) -> tuple[AgentClient, AgentLink]:
    """The connected agent of a running sandbox; ConnectError otherwise."""
    try:
        nvm = ctx.node.running(sandbox_id)
        link = nvm.agent
        return await link.connected(link.budget(None)), link
    except errors.NotFound:
        raise ConnectError(Code.UNAVAILABLE, sandbox_gone_message(sandbox_id)) from None
    except errors.ServerError as exc:
        raise ConnectError(Code.UNAVAILABLE, f"sandbox {sandbox_id}: {one_line(exc)}") from exc


def connect_error(
    exc: BaseException, sandbox_id: str, link: AgentLink | None = None, agent: AgentClient | None = None
) -> ConnectError:
    """The ConnectError for a failure of a call into the guest (a lost agent is reported to its link)."""
    if isinstance(exc, ConnectError):
        return exc
    if isinstance(exc, RemoteError):
        if exc.code == "unknown_user":  # envd: "invalid username", UNAUTHENTICATED
            return ConnectError(Code.UNAUTHENTICATED, f"invalid username: {exc.message}")
        if exc.code == "unknown_op":
            old = "the guest agent predates this operation: rebuild the image (clawpot assets install)"
            return ConnectError(Code.UNIMPLEMENTED, old)
        return ConnectError(_REMOTE_CODES.get(exc.code, Code.INTERNAL), exc.message)
    if isinstance(exc, GuestError):
        if link is not None and agent is not None:
            link.lost(agent, exc)
        return ConnectError(
            Code.UNAVAILABLE, f"the connection to sandbox {sandbox_id} was lost: {one_line(exc)}"
        )
    if isinstance(exc, TimeoutError):
        return ConnectError(Code.UNAVAILABLE, f"the agent of sandbox {sandbox_id} did not answer in time")
    if isinstance(exc, errors.NotFound):
        return ConnectError(Code.UNAVAILABLE, sandbox_gone_message(sandbox_id))
    if isinstance(exc, errors.ServerError):
        return ConnectError(Code.UNAVAILABLE, f"sandbox {sandbox_id}: {one_line(exc)}")
    raise exc
