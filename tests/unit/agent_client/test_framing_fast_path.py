"""The copy-free paths of the agent channel: they must change how fast bytes move, never which bytes.

- ``FrameDecoder`` parses frames in place and carries only a frame split across chunks: any split of any
  frames decodes to the same frames.
- ``OutFrames`` reads a real pipe straight into encoded DATA frames.
- ``ChunkReader`` takes over a real socket from a StreamReader after the handshake: nothing is lost or
  reordered across the swap, an end of stream seen before it is still reported, and what waits unread
  stays within ``AGENT_READ_AHEAD``.
"""

from __future__ import annotations

import asyncio
import fcntl
import itertools
import os
import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clawpot.agent.outframes import OutFrames
from clawpot.agent.protocol import (
    HEADER_SIZE,
    MAX_PAYLOAD,
    Frame,
    FrameDecoder,
    FrameType,
    Pipe,
    encode_frame,
)
from clawpot.agent_client.chunks import ChunkReader
from clawpot.limits import AGENT_READ_AHEAD

_frame = st.builds(
    Frame,
    st.sampled_from(list(FrameType)),
    st.integers(0, 2**32 - 1),
    st.integers(0, 255),
    st.one_of(st.binary(max_size=300), st.integers(0, MAX_PAYLOAD).map(os.urandom)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames=st.lists(_frame, max_size=12), cuts=st.lists(st.integers(0, 12 * MAX_PAYLOAD), max_size=12))
def test_decoder_returns_the_frames_however_the_bytes_are_split(frames: list[Frame], cuts: list[int]) -> None:
    wire = b"".join(encode_frame(f.type, f.stream, f.payload, f.flags) for f in frames)
    bounds = sorted({0, len(wire), *(c for c in cuts if c < len(wire))})
    decoder = FrameDecoder()
    decoded: list[Frame] = []
    for start, end in itertools.pairwise(bounds):
        decoder.feed(wire[start:end])
        while (frame := decoder.next()) is not None:
            decoded.append(frame)
        assert len(decoder.rest()) < HEADER_SIZE + MAX_PAYLOAD
    assert decoded == frames
    assert decoder.rest() == b""


def test_decoder_fed_twice_without_draining_loses_nothing() -> None:
    frames = [encode_frame(FrameType.DATA, 1, bytes([i]) * 1000, Pipe.STDOUT) for i in range(6)]
    wire = b"".join(frames)
    decoder = FrameDecoder()
    decoder.feed(wire[:2500])
    decoder.feed(wire[2500:4100])  # no next() in between: both chunks wait
    decoder.feed(wire[4100:])
    payloads = []
    while (frame := decoder.next()) is not None:
        payloads.append(frame.payload)
    assert payloads == [bytes([i]) * 1000 for i in range(6)]


@pytest.mark.parametrize("limit", [1, 10, MAX_PAYLOAD - 1, MAX_PAYLOAD, MAX_PAYLOAD + 1, 10 * MAX_PAYLOAD])
def test_out_frames_read_a_pipe_into_data_frames(limit: int) -> None:
    out = OutFrames(4)
    body = os.urandom(3 * MAX_PAYLOAD + 123)
    r, w = os.pipe()
    try:
        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 1 << 20)  # the whole body fits: one read sees all of it
        os.write(w, body)
        count, view = out.read(r, 7, Pipe.STDERR, limit)
        assert view is not None and count == min(limit, out.capacity, len(body))
        decoder = FrameDecoder()
        decoder.feed(bytes(view))
        frames = []
        while (frame := decoder.next()) is not None:
            frames.append(frame)
        assert decoder.rest() == b""
        assert all(f.type == FrameType.DATA and f.stream == 7 and f.flags == Pipe.STDERR for f in frames)
        assert all(0 < len(f.payload) <= MAX_PAYLOAD for f in frames)
        assert b"".join(f.payload for f in frames) == body[:count]
        os.close(w)
        w = -1
        os.read(r, len(body))
        assert out.read(r, 7, Pipe.STDOUT, 100) == (0, None)  # end of file
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


async def _connected() -> tuple[asyncio.StreamReader, asyncio.StreamWriter, socket.socket]:
    host, guest = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    reader, writer = await asyncio.open_unix_connection(sock=host)
    return reader, writer, guest


async def _read_all(chunks: ChunkReader) -> bytes:
    out = bytearray()
    while data := await chunks.read():
        out += data
    return bytes(out)


async def test_chunk_reader_takes_over_without_losing_or_reordering_bytes() -> None:
    reader, writer, guest = await _connected()
    before = os.urandom(100_000)  # fits in the socket buffer: sent before anything reads
    guest.sendall(before)
    await reader.readexactly(1000)  # as the handshake does: the reader keeps the rest
    await asyncio.sleep(0.05)
    chunks, held = await ChunkReader.take_over(reader, writer)
    after = os.urandom(2_000_000)
    guest.setblocking(False)
    sent = asyncio.create_task(asyncio.get_running_loop().sock_sendall(guest, after))
    await asyncio.sleep(0.2)
    # Nobody read: what waits is bounded (one more socket read may land past the mark).
    assert chunks._paused and AGENT_READ_AHEAD < chunks._size <= AGENT_READ_AHEAD + 256 * 1024
    received = asyncio.create_task(_read_all(chunks))
    await sent
    guest.close()
    assert held + await asyncio.wait_for(received, 10) == before[1000:] + after
    writer.close()


async def test_chunk_reader_reports_an_end_the_stream_reader_already_saw() -> None:
    reader, writer, guest = await _connected()
    guest.sendall(b"tail")
    guest.shutdown(socket.SHUT_WR)
    await asyncio.sleep(0.05)  # the StreamReader gets the bytes and the end
    chunks, held = await ChunkReader.take_over(reader, writer)
    assert held == b"tail"
    assert await asyncio.wait_for(chunks.read(), 5) == b""
    writer.close()
    guest.close()
