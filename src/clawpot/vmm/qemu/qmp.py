"""Control of one QEMU through QMP: status, power button, quit, and the commands of pause and snapshots
(``stop``, ``cont``, migration to and from a passed file descriptor).

One connection per QEMU, kept open and reused by every command (``QmpControl(persistent=True)``, what
the server uses: it is its VMs' one controller): pause + resume through
the API is the product, and a connection per command cost its setup each time (connect, greeting,
``qmp_capabilities``: 1 ms on an idle host, tens of ms on a loaded one, where QEMU's main loop is slow to
accept). The exchange is written out here (JSON lines, ``id`` on each command, SCM_RIGHTS for a file
descriptor), no library:

- A reader task drains the socket all the time: replies go to the command waiting for them (matched by
  ``id``), asynchronous events (STOP, RESUME, RTC_CHANGE, NIC_RX_FILTER_CHANGED...) are dropped. So
  events a guest provokes never pile up in QEMU's output buffer nor in ours, and a reply never waits
  behind them. A line longer than ``limits.QMP_MAX_LINE`` ends the connection (QEMU never sends one).
- Every command has a deadline (``timeout``). A connection that times out, hits EOF or a socket error is
  closed, and the next command connects again: a QEMU that was wedged for a while, or restarted its
  monitor, is reached again without anyone noticing but the one call that failed.
- QEMU's QMP socket serves one client at a time: while a server holds its VMs' connections, another
  client waits. ``close`` lets go (a detach before a restart). Without ``persistent`` (the driver, whose
  ``status`` runs in another process, and one-shot queries) the connection is closed after each call.
- The connection belongs to the event loop that opened it; a command from another loop (a one-shot
  ``asyncio.run`` in a test or the driver) opens its own.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import itertools
import json
import logging
import socket
from pathlib import Path
from typing import Any

from clawpot import limits
from clawpot.vmm.base import VmmError

log = logging.getLogger(__name__)


class QmpError(VmmError):
    """A QMP command could not be delivered or QEMU rejected it."""


class QmpDisconnected(QmpError):
    """The connection ended before the reply came (QEMU exited, or the socket broke)."""


class _Connection:
    """One open QMP connection, its reader task and the replies awaited."""

    def __init__(self, sock: socket.socket, loop: asyncio.AbstractEventLoop, where: str) -> None:
        self.sock = sock
        self.loop = loop
        self.where = where
        self.greeting: asyncio.Future[dict[str, Any]] = loop.create_future()
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.ids = itertools.count(1)
        self.closed = False
        self.reader = loop.create_task(self._read(), name=f"qmp reader {where}")

    @classmethod
    async def open(cls, path: Path) -> _Connection:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, str(path))
        except BaseException:
            sock.close()
            raise
        conn = cls(sock, loop, str(path))
        try:
            greeting = await conn.greeting
            if "QMP" not in greeting:
                raise QmpError(f"QMP on {path}: no QMP greeting")
            await conn.execute("qmp_capabilities", None)
        except BaseException:
            conn.close()
            raise
        return conn

    async def _read(self) -> None:
        buffer = bytearray()
        try:
            while True:
                data = await self.loop.sock_recv(self.sock, 65536)
                if not data:
                    break
                buffer += data
                while (end := buffer.find(b"\n")) >= 0:
                    line = bytes(buffer[:end])
                    del buffer[: end + 1]
                    self._dispatch(line)
                if len(buffer) > limits.QMP_MAX_LINE:
                    log.warning("QMP on %s: a line over %d bytes; closing", self.where, limits.QMP_MAX_LINE)
                    break
        except OSError:
            pass
        finally:
            self._end()

    def _dispatch(self, line: bytes) -> None:
        try:
            message = json.loads(line)
        except ValueError:
            return
        if not isinstance(message, dict):
            return
        if "QMP" in message and not self.greeting.done():
            self.greeting.set_result(message)
        elif "return" in message or "error" in message:
            ident = message.get("id")
            waiter = self.pending.pop(ident, None) if isinstance(ident, int) else None
            if waiter is not None and not waiter.done():
                waiter.set_result(message)
        # anything else is an event: dropped

    def _fail_waiters(self, why: str) -> None:
        self.closed = True
        error = QmpDisconnected(f"QMP on {self.where}: {why}")
        if not self.greeting.done():
            self.greeting.set_exception(error)
            self.greeting.exception()  # retrieved: nobody may be awaiting it any more
        for waiter in self.pending.values():
            if not waiter.done():
                waiter.set_exception(error)
        self.pending.clear()

    def _end(self) -> None:
        """The reader's last step: only then is the socket closed. Closing it while the loop still
        watches its fd (a pending ``sock_recv``) would let the number be reused by another socket (an
        agent connection) whose reader the loop would then drop when the cancelled read is cleaned up."""
        self._fail_waiters("QEMU closed the connection")
        self.sock.close()

    def close(self) -> None:
        if self.reader.done() or self.loop.is_closed():
            self._fail_waiters("the connection was closed")
            self.sock.close()
            return
        self._fail_waiters("the connection was closed")
        self.reader.cancel()  # its ``finally`` closes the socket, after the loop let go of the fd

    async def execute(self, command: str, arguments: dict[str, Any] | None, fd: int | None = None) -> object:
        if self.closed:
            raise QmpDisconnected(f"QMP on {self.where}: the connection is closed")
        ident = next(self.ids)
        message: dict[str, Any] = {"execute": command, "id": ident}
        if arguments is not None:
            message["arguments"] = arguments
        waiter: asyncio.Future[dict[str, Any]] = self.loop.create_future()
        self.pending[ident] = waiter
        try:
            if fd is not None:
                # QEMU keeps a descriptor that arrives with any byte; a space is JSON whitespace.
                self.sock.sendmsg([b" "], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])
            await self.loop.sock_sendall(self.sock, json.dumps(message).encode() + b"\n")
            reply = await waiter
        finally:
            self.pending.pop(ident, None)
        if "error" in reply:
            error = reply["error"]
            desc = error.get("desc", error) if isinstance(error, dict) else error
            raise QmpError(f"QMP {command} on {self.where}: {desc}")
        return reply.get("return")


class QmpControl:
    def __init__(self, socket_path: Path, *, timeout: float = 5.0, persistent: bool = False) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self.persistent = persistent
        self._conn: _Connection | None = None
        # One command at a time; per event loop (an asyncio.Lock belongs to the loop that used it).
        self._lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None

    def _serialised(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock_loop is not loop:
            self._lock, self._lock_loop = asyncio.Lock(), loop
        return self._lock

    async def _connected(self) -> _Connection:
        conn = self._conn
        if conn is not None and (conn.closed or conn.loop is not asyncio.get_running_loop()):
            conn.close()
            conn = self._conn = None
        if conn is None:
            conn = self._conn = await _Connection.open(self.socket_path)
        return conn

    def close(self) -> None:
        """Let go of the connection (QEMU's socket then serves the next client)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def execute(self, command: str, arguments: dict[str, Any] | None = None) -> object:
        return (await self.execute_all((command, arguments)))[0]

    async def query(self, *commands: str) -> list[object]:
        """Several argument-less commands (``query-*`` for a status report)."""
        return await self.execute_all(*((command, None) for command in commands))

    async def execute_all(
        self, *calls: tuple[str, dict[str, Any] | None], fd: int | None = None
    ) -> list[object]:
        """Several commands in a row, nothing in between. ``fd`` is passed to QEMU with the first
        (SCM_RIGHTS), for a ``getfd`` among ``calls``: QEMU keeps it under the name ``getfd`` gives it.
        A failure to deliver (timeout, EOF, socket error) closes the connection; the next call opens one."""
        command = calls[0][0]
        async with self._serialised():
            try:
                async with asyncio.timeout(self.timeout):
                    conn = await self._connected()
                    replies = []
                    for index, (command, arguments) in enumerate(calls):
                        replies.append(await conn.execute(command, arguments, fd if index == 0 else None))
                    return replies
            except QmpDisconnected:
                self.close()
                raise
            except QmpError:
                raise  # QEMU answered with an error: the connection is fine
            except (OSError, EOFError, TimeoutError) as exc:
                self.close()
                detail = str(exc) or type(exc).__name__
                raise QmpError(f"QMP {command} on {self.socket_path}: {detail}") from exc
            finally:
                if not self.persistent:
                    self.close()

    async def execute_quick(self, command: str) -> object:
        """One argument-less command (pause and resume: ``stop``, ``cont``)."""
        return await self.execute(command)

    async def status(self) -> str:
        """QEMU's run state: "running", "paused", "shutdown", "internal-error", ..."""
        reply = await self.execute("query-status")
        status = reply.get("status") if isinstance(reply, dict) else None
        if not isinstance(status, str):
            raise QmpError(f"QMP query-status: unexpected reply {reply!r}")
        return status

    async def system_powerdown(self) -> None:
        """Press the ACPI power button; the guest decides what to do with it."""
        await self.execute("system_powerdown")

    async def quit(self) -> None:
        """Make QEMU exit now. The reply may be lost as QEMU closes the socket: that is success too."""
        with contextlib.suppress(QmpDisconnected):
            await self.execute("quit")
        self.close()
