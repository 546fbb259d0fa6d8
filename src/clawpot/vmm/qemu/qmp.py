"""Control of one QEMU through QMP (``qemu.qmp``'s ``QMPClient``): status, power button, quit, and the
commands of pause and snapshots (``stop``, ``cont``, migration to and from a passed file descriptor).

One short connection per command: QEMU's QMP socket serves a single client at a time, and a
connection held open would tie a background reader task to one event loop for the VM's whole life.
Connect + greeting + capabilities negotiation costs about a millisecond. A lock serialises commands so
two callers never race for the one connection slot. Library errors become ``QmpError`` here, once.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

from qemu.qmp import ExecInterruptedError, QMPClient, QMPError

from clawpot.vmm.base import VmmError

# qemu.qmp logs every hang-up at ERROR level; a VM that quits is routine for us.
logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)


class QmpError(VmmError):
    """A QMP command could not be delivered or QEMU rejected it."""


class QmpControl:
    def __init__(self, socket_path: Path, *, timeout: float = 5.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self._lock = asyncio.Lock()

    async def execute(self, command: str, arguments: dict[str, Any] | None = None) -> object:
        return (await self.execute_all((command, arguments)))[0]

    async def query(self, *commands: str) -> list[object]:
        """Several argument-less commands over one connection (``query-*`` for a status report)."""
        return await self.execute_all(*((command, None) for command in commands))

    async def execute_all(
        self, *calls: tuple[str, dict[str, Any] | None], fd: int | None = None
    ) -> list[object]:
        """Several commands over one connection. ``fd`` is passed to QEMU first (SCM_RIGHTS), for a
        ``getfd`` among ``calls``: QEMU keeps it under the name ``getfd`` gives it."""
        async with self._lock:
            client = QMPClient("clawpot")
            command = "connect"
            try:
                async with asyncio.timeout(self.timeout):
                    await client.connect(str(self.socket_path))
                    if fd is not None:
                        client.send_fd_scm(fd)
                    replies = []
                    for command, arguments in calls:
                        replies.append(await client.execute(command, arguments))
                    return replies
            except (QMPError, OSError, EOFError, TimeoutError) as exc:
                detail = str(exc) or type(exc).__name__
                what = command if command != "connect" else calls[0][0]
                raise QmpError(f"QMP {what} on {self.socket_path}: {detail}") from exc
            finally:
                try:
                    await client.disconnect()
                except (QMPError, OSError, EOFError):
                    pass  # the peer hung up first (e.g. after `quit`): nothing left to close

    async def execute_quick(self, command: str) -> object:
        """One argument-less command over a bare connection: the QMP exchange written out (greeting,
        ``qmp_capabilities``, the command; events skipped), no library.

        For pause and resume, whose round trip is the product: ``qemu.qmp`` spends 2.5-4 ms here
        setting up its reader and writer tasks per connection, the bare exchange about 1 ms
        (bench/snapshot.py). A connection kept open instead would lock every other QMP client (the
        driver's status, a second server) out of QEMU's single-client socket.
        """
        async with self._lock:
            writer: asyncio.StreamWriter | None = None
            try:
                async with asyncio.timeout(self.timeout):
                    reader, writer = await asyncio.open_unix_connection(str(self.socket_path))
                    greeting = json.loads(await reader.readline())
                    if not isinstance(greeting, dict) or "QMP" not in greeting:
                        raise QmpError(f"QMP {command} on {self.socket_path}: no QMP greeting")
                    for name in ("qmp_capabilities", command):
                        writer.write(json.dumps({"execute": name}).encode() + b"\n")
                        reply = await _reply(reader)
                        if "error" in reply:
                            error = reply["error"]
                            desc = error.get("desc", error) if isinstance(error, dict) else error
                            raise QmpError(f"QMP {name} on {self.socket_path}: {desc}")
                    return reply.get("return")
            except (OSError, EOFError, TimeoutError, ValueError) as exc:
                detail = str(exc) or type(exc).__name__
                raise QmpError(f"QMP {command} on {self.socket_path}: {detail}") from exc
            finally:
                if writer is not None:
                    writer.close()

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
        try:
            await self.execute("quit")
        except QmpError as exc:
            if not isinstance(exc.__cause__, ExecInterruptedError):
                raise


async def _reply(reader: asyncio.StreamReader) -> dict[str, Any]:
    """The next reply on a bare QMP connection, skipping asynchronous events (STOP, RESUME, ...)."""
    while True:
        line = await reader.readline()
        if not line:
            raise EOFError("QEMU closed the QMP connection")
        message = json.loads(line)
        if isinstance(message, dict) and ("return" in message or "error" in message):
            return message
