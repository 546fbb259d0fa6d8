"""The operations a host can OPEN, by name."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .configure import ConfigureSession, RefreshSession
from .execution import ExecSession
from .files import GetSession, PutSession
from .session import Session

if TYPE_CHECKING:
    from .connection import Connection


class ShutdownSession(Session):
    """Acknowledge, then power the guest off (on a host: stop the agent)."""

    op = "shutdown"

    def start(self) -> None:
        self.finish({"guest": self.conn.ctx.guest})
        self.conn.ctx.request_shutdown("shutdown requested by the host")


OPS: dict[str, Callable[[Connection, int, dict[str, Any]], Session]] = {
    "exec": ExecSession,
    "put": PutSession,
    "get": GetSession,
    "shutdown": ShutdownSession,
    "configure": ConfigureSession,
    "refresh": RefreshSession,
}
