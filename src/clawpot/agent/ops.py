"""The operations a host can OPEN, by name."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .configure import ConfigureSession, RefreshSession
from .execution import ExecSession
from .files import GetSession, PutSession
from .fsops import ListSession, MkdirSession, MoveSession, RemoveSession, StatSession
from .procops import (
    ProcAttachSession,
    ProcInputSession,
    ProcListSession,
    ProcResizeSession,
    ProcSignalSession,
    ProcStartSession,
)
from .session import Session
from .watch import WatchSession

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
    "stat": StatSession,
    "list": ListSession,
    "mkdir": MkdirSession,
    "move": MoveSession,
    "remove": RemoveSession,
    "watch": WatchSession,
    "proc_start": ProcStartSession,
    "proc_attach": ProcAttachSession,
    "proc_list": ProcListSession,
    "proc_input": ProcInputSession,
    "proc_signal": ProcSignalSession,
    "proc_resize": ProcResizeSession,
    "refresh": RefreshSession,
}
