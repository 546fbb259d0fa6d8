"""The error kinds the service and the node raise; the gRPC servicer maps each kind to one status code.

One vocabulary for every layer, kept beside ``limits`` rather than inside ``service``: the node raises
them too (a control plane driving a node sees the same kinds), and the node must not import the layer
above it. No gRPC here.

ServerError
├── InvalidArgument     bad vcpus, memory, id, label, argv, env, path, page token → INVALID_ARGUMENT
├── NotFound            no such VM or guest file                                  → NOT_FOUND
├── AlreadyExists       requested address assigned to another VM                  → ALREADY_EXISTS
├── FailedPrecondition  VM not Running, deleted while creating, backend lacks it → FAILED_PRECONDITION
├── ResourceExhausted   host memory (admission), address pool                     → RESOURCE_EXHAUSTED
├── Unavailable         agent not answering or lost, backend not usable here      → UNAVAILABLE
├── DeadlineExceeded    exec timeout (host-enforced; process group killed)        → DEADLINE_EXCEEDED
└── OutOfRange          WatchVms from a sequence no longer kept (or not issued)   → OUT_OF_RANGE

``translate`` is the one place other expected failures become one of these (an agent connection lost
mid-stream is UNAVAILABLE, wherever it surfaces). Anything else is a bug: INTERNAL with its message.
Messages are one line and quote client-supplied values only through ``quote`` (a short prefix), so a
10 kB id cannot turn into an error bigger than the status trailer.
"""

from __future__ import annotations

from clawpot import limits
from clawpot.agent_client.errors import GuestError, RemoteError


class ServerError(Exception):
    """A failure the caller should see with its own status code and a one-line message."""


class InvalidArgument(ServerError):
    pass


class NotFound(ServerError):
    pass


class AlreadyExists(ServerError):
    pass


class FailedPrecondition(ServerError):
    pass


class ResourceExhausted(ServerError):
    pass


class Unavailable(ServerError):
    pass


class DeadlineExceeded(ServerError):
    pass


class OutOfRange(ServerError):
    pass


def quote(value: object, limit: int = limits.QUOTE_CHARS) -> str:
    """``repr`` of at most ``limit`` characters of ``value``, with '...' when cut: safe to put in a
    message whatever its size or content (control characters come out escaped)."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} chars)"


def one_line(message: str, limit: int = limits.MAX_STATUS_MESSAGE_CHARS) -> str:
    """The first line of ``message``, cut to ``limit`` characters: what a status may carry."""
    text = message.strip()
    line = text.splitlines()[0] if text else "error"
    return line if len(line) <= limit else line[: limit - 3] + "..."


def translate(exc: BaseException) -> ServerError | None:
    """The ``ServerError`` an expected failure stands for; None for a bug (the caller says INTERNAL)."""
    if isinstance(exc, ServerError):
        return exc
    if isinstance(exc, RemoteError):
        # The agent refused one operation (bad path, session ended, ...): this VM, not the server.
        return FailedPrecondition(f"the guest agent refused: {exc}")
    if isinstance(exc, GuestError):
        # AgentDisconnected, AgentUnreachable, ProtocolError: the agent is not usable right now.
        return Unavailable(f"guest agent not usable: {exc}")
    return None
