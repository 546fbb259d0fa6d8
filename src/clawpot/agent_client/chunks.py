"""What the agent sends, read as the socket delivers it: whole chunks, never copied on this side.

An ``asyncio.StreamReader`` copies every byte twice (into its buffer, then out of it); at stdout rates
that was a fifth of the host's time. After the handshake, ``ChunkReader.take_over`` puts this protocol
in the StreamReader's place on the transport: the frame decoder then parses the transport's own
``bytes`` in place. The StreamReaderProtocol stays behind it for the writing side, so
``StreamWriter.drain`` and ``wait_closed`` keep working: write flow control and the connection's end
are passed on to it.

Bounded like the StreamReader was: reading pauses while ``limits.AGENT_READ_AHEAD`` bytes wait.
"""

from __future__ import annotations

import asyncio
from collections import deque

from clawpot.limits import AGENT_READ_AHEAD


class ChunkReader(asyncio.Protocol):
    def __init__(self, inner: asyncio.BaseProtocol, transport: asyncio.Transport) -> None:
        self._inner = inner  # the StreamReaderProtocol, still serving the StreamWriter
        self._transport = transport
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._paused = False
        self._eof = False
        self._exc: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None

    @classmethod
    async def take_over(
        cls, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[ChunkReader, bytes]:
        """Replace ``reader`` on the writer's transport; returns the new reader and what ``reader`` still
        held (read before anything the new one receives)."""
        transport = writer.transport
        assert isinstance(transport, asyncio.Transport)
        chunks = cls(transport.get_protocol(), transport)
        # No await between these two steps: every byte goes to exactly one of the two readers.
        transport.set_protocol(chunks)
        if transport.is_closing():
            chunks._eof = True  # closed before the swap: nothing more will come
        else:
            # An end of stream the StreamReader already saw stopped the transport's reading for good;
            # re-arming it makes the socket report that end again, to us (harmless otherwise).
            transport.pause_reading()
            transport.resume_reading()
        reader.feed_eof()
        held = await reader.read()  # returns at once: the reader has all it will ever get
        return chunks, held

    # --- protocol (called by the transport) ------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        if self._size > AGENT_READ_AHEAD and not self._paused:
            self._paused = True
            self._transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return True  # as the StreamReaderProtocol did: the connection closes once the reader sees the end

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._exc = exc
        self._wake()
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # --- reading ---------------------------------------------------------------------------------------

    async def read(self) -> bytes:
        """The next chunk; b"" at the end of the stream (or the error that ended it)."""
        while not self._chunks:
            if self._exc is not None:
                raise self._exc
            if self._eof:
                return b""
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        data = self._chunks.popleft()
        self._size -= len(data)
        if self._paused and self._size <= AGENT_READ_AHEAD // 2:
            self._paused = False
            self._transport.resume_reading()
        return data
