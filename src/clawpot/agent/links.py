"""The byte streams the agent serves: stream sockets (vsock, unix, an inherited fd) and serial lines.

Both pause reading from the host while their outgoing buffer is above its high-water mark, so a host that
stops reading cannot make the agent buffer without bound.

A serial line (the virtio-serial port) is one endless byte stream shared by successive host connections.
On the virtio port, read() returning 0 means "no host connected" (it keeps returning 0 and poll keeps
reporting IN|HUP, so polling cannot wait for the next host); the kernel raises SIGIO when the host
(dis)connects, and a slow timer backs it up. Bytes written before a reconnect may reach the next host, which
is why each host session begins with a HELLO carrying a fresh nonce (see connection.py).
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import signal
from collections.abc import Callable

from .connection import AgentContext, Connection

log = logging.getLogger(__name__)

_HIGH_WATER = 512 * 1024
_LOW_WATER = 128 * 1024
_READ_SIZE = 256 * 1024
# The virtio console driver sends at most 32 KiB per write(); larger writes just come back short.
_SERIAL_WRITE = 32 * 1024
_RECONNECT_POLL = 1.0


class SocketLink(asyncio.Protocol):
    resync = False

    def __init__(self, ctx: AgentContext, name: str, on_closed: Callable[[SocketLink], None]) -> None:
        self.ctx = ctx
        self.name = name
        self._on_closed = on_closed
        self._transport: asyncio.Transport | None = None
        self._paused = False
        self._fd = -1
        self.conn = Connection(ctx, self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._fd = transport.get_extra_info("socket").fileno()
        transport.set_write_buffer_limits(high=_HIGH_WATER, low=_LOW_WATER)
        log.info("%s: connected", self.name)

    def data_received(self, data: bytes) -> None:
        self.conn.data_received(data)

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.lost("host disconnected")
        log.info("%s: closed%s", self.name, f" ({exc})" if exc else "")
        self._on_closed(self)

    def pause_writing(self) -> None:
        self._paused = True
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        self._paused = False
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()
        self.conn.writable()

    @property
    def writing_paused(self) -> bool:
        return self._paused

    def write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def write_view(self, data: memoryview) -> None:
        """Write bytes the caller overwrites as soon as this returns (outframes.py).

        While the transport has nothing queued, the bytes go to the socket directly, as the transport
        itself would send them; only what the socket does not take is copied, into a ``bytes`` the
        transport may keep (some Python versions queue the caller's object instead of copying it)."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if not transport.get_write_buffer_size():
            try:
                data = data[os.write(self._fd, data) :]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                pass  # the transport's own write below meets the same error and closes the connection
        if data:
            transport.write(bytes(data))

    def end_session(self, rest: bytes) -> None:
        if self._transport is not None:
            self._transport.close()  # flushes what is queued (the ERROR / REJECT), then closes

    def close(self) -> None:
        if self._transport is not None:
            self._transport.abort()


class SerialLink:
    """A serial line: the virtio-serial port (``device=True``) or an inherited stream fd behaving like one."""

    resync = True

    def __init__(
        self, ctx: AgentContext, fd: int, name: str, *, device: bool, on_closed: Callable[[SerialLink], None]
    ) -> None:
        self.ctx = ctx
        self.name = name
        self._fd = fd
        self._device = device
        self._on_closed = on_closed
        self._loop = ctx.loop
        self._out = bytearray()
        self._paused = False
        self._suspended = False  # virtio port with no host connected
        self._reading = False
        self._writing = False
        self._closed = False
        self._host_seen = False
        self._poll: asyncio.TimerHandle | None = None
        self.conn = Connection(ctx, self)
        os.set_blocking(fd, False)
        if device:
            # SIGIO's default action kills the process: install the handler before enabling O_ASYNC.
            self._loop.add_signal_handler(signal.SIGIO, self._wake)
            fcntl.fcntl(fd, fcntl.F_SETOWN, os.getpid())
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_ASYNC)
        self._update_reader()

    @property
    def writing_paused(self) -> bool:
        return self._paused

    # --- reading ---------------------------------------------------------------------------------------

    def _update_reader(self) -> None:
        want = not (self._closed or self._paused or self._suspended)
        if want != self._reading:
            self._reading = want
            if want:
                self._loop.add_reader(self._fd, self._on_readable)
            else:
                self._loop.remove_reader(self._fd)

    def _on_readable(self) -> None:
        try:
            data = os.read(self._fd, _READ_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            log.warning("%s: read failed: %s", self.name, exc)
            data = b""
        if data:
            if not self._host_seen:
                self._host_seen = True
                log.info("%s: host connected", self.name)
            self.conn.data_received(data)
        elif self._device:
            self._host_gone()
        else:
            self.close()

    def _host_gone(self) -> None:
        if self._host_seen:
            self._host_seen = False
            log.info("%s: host disconnected", self.name)
        if not self.conn.pristine:
            self.conn.lost("host disconnected")
            self.conn = Connection(self.ctx, self)
        self._out.clear()  # nobody to deliver it to; the next host would discard it anyway
        self._set_writing(False)
        self._set_paused(False)
        self._suspended = True
        self._update_reader()
        if self._poll is None:
            self._poll = self._loop.call_later(_RECONNECT_POLL, self._poll_tick)

    def _poll_tick(self) -> None:
        self._poll = None
        self._wake()

    def _wake(self) -> None:
        """SIGIO or the poll timer: try reading again; a read of 0 suspends us once more."""
        if self._suspended and not self._closed:
            self._suspended = False
            self._update_reader()

    # --- writing ---------------------------------------------------------------------------------------

    def write(self, data: bytes | memoryview) -> None:
        if self._closed:
            return
        self._out += data
        self._flush()

    def write_view(self, data: memoryview) -> None:
        self.write(data)  # copied into the outgoing buffer at once

    def _flush(self) -> None:
        while self._out:
            try:
                with memoryview(self._out) as view, view[:_SERIAL_WRITE] as chunk:
                    written = os.write(self._fd, chunk)
            except BlockingIOError:
                break
            except OSError as exc:
                log.warning("%s: write failed: %s", self.name, exc)
                self._out.clear()
                break
            del self._out[:written]
        self._set_writing(bool(self._out))
        if len(self._out) > _HIGH_WATER:
            self._set_paused(True)
        elif len(self._out) <= _LOW_WATER and self._paused:
            self._set_paused(False)
            self.conn.writable()

    def _set_writing(self, on: bool) -> None:
        if on != self._writing and not self._closed:
            self._writing = on
            if on:
                self._loop.add_writer(self._fd, self._flush)
            else:
                self._loop.remove_writer(self._fd)

    def _set_paused(self, on: bool) -> None:
        self._paused = on
        self._update_reader()

    # --- sessions --------------------------------------------------------------------------------------

    def end_session(self, rest: bytes) -> None:
        # Keep queued output (it carries the ERROR that explains why); the next HELLO starts afresh.
        self.conn = Connection(self.ctx, self)
        if rest:
            self.conn.data_received(rest)

    def close(self) -> None:
        if self._closed:
            return
        self.conn.lost("serial line closed")
        self._set_writing(False)
        self._closed = True
        self._update_reader()
        if self._poll is not None:
            self._poll.cancel()
        if self._device:
            self._loop.remove_signal_handler(signal.SIGIO)
        os.close(self._fd)
        log.info("%s: closed", self.name)
        self._on_closed(self)
