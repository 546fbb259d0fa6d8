"""Errors of the host-side agent client. Lower-layer errors (OSError, timeouts, framing) are translated
into these once, at the connection boundary."""

from __future__ import annotations


class GuestError(Exception):
    """Root of ``clawpot.agent_client`` errors.

    GuestError
    ├── AgentUnreachable    no working connection to the agent before the deadline
    ├── AgentDisconnected   the connection broke, or was closed, while in use
    ├── ProtocolError       the peer answered but does not speak our protocol (or version)
    ├── RemoteError         the agent refused or failed one operation (``code`` + message)
    └── FileTooLarge        a download went past the size the caller allows (nothing is kept)
    """


class AgentUnreachable(GuestError):
    def __init__(self, endpoint: str, waited: float, last_error: str, attempts: int) -> None:
        super().__init__(
            f"agent not reachable at {endpoint} after {waited:g} s: {last_error} "
            f"({attempts} attempt{'s' if attempts != 1 else ''})"
        )
        self.endpoint = endpoint
        self.waited = waited
        self.last_error = last_error
        self.attempts = attempts


class AgentDisconnected(GuestError):
    pass


class ProtocolError(GuestError):
    pass


class RemoteError(GuestError):
    """``code`` is the agent's error code; ``errno`` the symbolic OS error behind an ``io_error``
    (``ENOENT``, ``EEXIST``...) when the agent named one."""

    def __init__(self, code: str, message: str, errno: str | None = None) -> None:
        super().__init__(f"{message} [{code}{'/' + errno if errno else ''}]")
        self.code = code
        self.message = message
        self.errno = errno


class FileTooLarge(GuestError):
    pass
