"""The ``proc_*`` operations: managed processes that outlive their stream (``processes.ProcessTable``).

- ``proc_start``: like ``exec`` (``argv``, ``env``, ``cwd``, ``pty``, ``stdin``, ``timeout``) plus ``user``
  and ``tag``; the environment is the user's login basics (PATH, HOME, USER, LOGNAME) under ``env``,
  ``cwd`` defaults to the user's home. INFO {pid}, then output like ``proc_attach``.
- ``proc_attach``: ``pid`` or ``tag``. INFO {pid, pty}, the output buffered while nobody listened, live
  output, END {exit_code, signal, timed_out, duration} when the process has ended (at once for one that
  ended already). CANCEL on either stream detaches: the process runs on, END {"detached": true}.
- ``proc_list``: END {processes: [{pid, tag, argv, env, cwd, pty}]} of the running ones (env and cwd
  as they were asked for).
- ``proc_input``: ``pid`` or ``tag``, ``close_stdin``; DATA on stdin is written to the process, EOF ends
  the request: END {} once everything is written (and stdin closed if asked).
- ``proc_signal``: ``pid`` or ``tag``, ``signal`` (sent to its process group). END {}.
- ``proc_resize``: ``pid`` or ``tag``, ``rows``, ``cols`` (a PTY process). END {}.

A pid or tag that matches nothing fails with ``not_found``.
"""

from __future__ import annotations

import signal
from collections import deque
from typing import TYPE_CHECKING, Any

from . import accounts
from .execution import _parse_argv, _parse_pty, _parse_timeout
from .processes import (
    MAX_TAG,
    ManagedProcess,
    Spec,
    check_cwd,
    login_env,
    own_account,
    table,
)
from .protocol import ErrorCode, FrameType, Pipe, encode_json
from .session import Session, SessionError, opt_bool, opt_int, opt_str

if TYPE_CHECKING:
    from .connection import Connection

_VALID_SIGNALS = frozenset(int(s) for s in signal.valid_signals())


def _parse_env(req: dict[str, Any]) -> dict[str, str]:
    extra = req.get("env") or {}
    if not isinstance(extra, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and k and "=" not in k and "\0" not in k + v
        for k, v in extra.items()
    ):
        raise SessionError(ErrorCode.BAD_REQUEST, "'env' must map variable names to strings")
    return dict(extra)


def _parse_tag(req: dict[str, Any]) -> str | None:
    tag = opt_str(req, "tag")
    if tag is not None and len(tag.encode()) > MAX_TAG:
        raise SessionError(ErrorCode.BAD_REQUEST, f"'tag' is longer than {MAX_TAG} bytes")
    return tag


def parse_spec(req: dict[str, Any]) -> Spec:
    argv = _parse_argv(req)
    env = _parse_env(req)
    named = accounts.request_account(req)  # unknown_user for a name the guest does not have
    account = named or own_account()
    # As envd: no cwd is the user's home; ``~`` and relative paths are taken from it.
    asked_cwd = opt_str(req, "cwd") or None
    cwd = accounts.resolve(asked_cwd or "~", account)
    check_cwd(cwd)
    pty = _parse_pty(req)
    full_env = {**login_env(account), **env}
    if pty is not None:
        full_env.setdefault("TERM", "xterm-256color")
    return Spec(
        argv=argv,
        env=full_env,
        cwd=cwd,
        user=named,
        pty=pty,
        stdin=opt_bool(req, "stdin", True),
        timeout=_parse_timeout(req),
        tag=_parse_tag(req),
        shown_env=env,
        shown_cwd=asked_cwd,
    )


def find(conn: Connection, req: dict[str, Any]) -> ManagedProcess:
    pid = opt_int(req, "pid", 0, 0, 2**31 - 1) or None
    tag = _parse_tag(req)
    if (pid is None) == (tag is None):
        raise SessionError(ErrorCode.BAD_REQUEST, "exactly one of 'pid' and 'tag' is required")
    return table(conn.ctx).find(pid, tag)


class _RequestSession(Session):
    """A session that acts on its request in ``start``."""

    def __init__(self, conn: Connection, stream_id: int, req: dict[str, Any]) -> None:
        super().__init__(conn, stream_id, req)
        self.req = req


def _required_int(req: dict[str, Any], key: str, lo: int, hi: int) -> int:
    if key not in req:
        raise SessionError(ErrorCode.BAD_REQUEST, f"{key!r} is required")
    return opt_int(req, key, lo, lo, hi)


def _running(conn: Connection, req: dict[str, Any]) -> ManagedProcess:
    managed = find(conn, req)
    if not managed.running:
        raise SessionError(ErrorCode.NOT_FOUND, f"process with pid {managed.pid} has ended")
    return managed


class ProcAttachSession(Session):
    """A listener of one managed process: its output within the host's credit, then its end."""

    op = "proc_attach"

    def __init__(self, conn: Connection, stream_id: int, req: dict[str, Any]) -> None:
        super().__init__(conn, stream_id, req)
        self.req = req
        self.managed: ManagedProcess | None = None
        self._pending: deque[tuple[int, bytes]] = deque()
        self._pending_bytes = 0
        self._end: dict[str, Any] | None = None

    def target(self) -> ManagedProcess:
        return find(self.conn, self.req)

    def start(self) -> None:
        self.managed = self.target()
        pty = self.managed.spec.pty is not None
        self.send(FrameType.INFO, encode_json({"pid": self.managed.pid, "pty": pty}))
        self.managed.attach(self)

    # --- Listener --------------------------------------------------------------------------------------

    def deliver(self, pipe: int, data: bytes) -> None:
        if self.done:
            return
        self._pending.append((pipe, data))
        self._pending_bytes += len(data)
        self._flush()

    def backlog(self) -> int:
        return self._pending_bytes

    def ended(self, result: dict[str, Any]) -> None:
        self._end = result
        self._flush()

    def _flush(self) -> None:
        while self._pending and self.send_window > 0 and not self.conn.writing_paused:
            pipe, data = self._pending[0]
            part = data[: self.send_window]
            if len(part) < len(data):
                self._pending[0] = (pipe, data[len(part) :])
            else:
                self._pending.popleft()
            self._pending_bytes -= len(part)
            self.send_window -= len(part)
            self.send_data(part, pipe)
        if not self._pending and self._end is not None and not self.done:
            if self.managed is not None and self.managed.spec.pty is None:
                for pipe in (Pipe.STDOUT, Pipe.STDERR):
                    self.send(FrameType.EOF, flags=pipe)
            else:
                self.send(FrameType.EOF, flags=Pipe.STDOUT)
            self.finish(self._end)

    def on_window(self) -> None:
        self._flush()
        if self.managed is not None and self.managed.running:
            self.managed.resume()

    def on_writable(self) -> None:
        self.on_window()

    def on_cancel(self) -> None:
        # Detach: the process runs on; what this stream had not sent yet waits for the next listener.
        self.finish({"detached": True})

    def cleanup(self) -> None:
        if self.managed is not None:
            self.managed.detach(self, list(self._pending))
        self._pending.clear()
        self._pending_bytes = 0


class ProcStartSession(ProcAttachSession):
    op = "proc_start"

    def target(self) -> ManagedProcess:
        return table(self.conn.ctx).start(parse_spec(self.req))


class ProcListSession(_RequestSession):
    op = "proc_list"

    def start(self) -> None:
        procs = table(self.conn.ctx).running.values()
        self.finish({"processes": [managed.info() for managed in procs]})


class ProcInputSession(Session):
    op = "proc_input"

    def __init__(self, conn: Connection, stream_id: int, req: dict[str, Any]) -> None:
        super().__init__(conn, stream_id, req)
        self.req = req
        self.close_stdin = opt_bool(req, "close_stdin", False)
        self.managed: ManagedProcess | None = None
        self._unwritten = 0
        self._eof = False

    def start(self) -> None:
        self.managed = _running(self.conn, self.req)

    def on_data(self, pipe: int, data: bytes) -> None:
        if pipe != Pipe.STDIN or self._eof:
            raise SessionError(ErrorCode.BAD_REQUEST, "proc_input takes DATA on stdin, before its EOF")
        assert self.managed is not None
        if not data:
            return
        self._unwritten += len(data)
        self.managed.write_stdin(data, self._written)

    def _written(self, count: int) -> None:
        self._unwritten -= count
        if not self.done:
            self.grant(count, flush=True)
            self._maybe_done()

    def on_eof(self, pipe: int) -> None:
        self._eof = True
        self._maybe_done()

    def _maybe_done(self) -> None:
        if not self._eof or self._unwritten or self.done:
            return
        assert self.managed is not None
        if self.close_stdin:
            self.close_stdin = False
            self.managed.close_stdin(lambda: self.finish({}))
        else:
            self.finish({})


class ProcSignalSession(_RequestSession):
    op = "proc_signal"

    def start(self) -> None:
        signo = _required_int(self.req, "signal", 1, 255)
        if signo not in _VALID_SIGNALS:
            raise SessionError(ErrorCode.BAD_REQUEST, f"invalid signal number {signo}")
        _running(self.conn, self.req).signal(signo)
        self.finish({})


class ProcResizeSession(_RequestSession):
    op = "proc_resize"

    def start(self) -> None:
        rows = _required_int(self.req, "rows", 1, 65535)
        cols = _required_int(self.req, "cols", 1, 65535)
        _running(self.conn, self.req).resize(rows, cols)
        self.finish({})
