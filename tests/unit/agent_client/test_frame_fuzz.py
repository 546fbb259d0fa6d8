"""Hypothesis fuzz of the host-side frame parser and the connection's dispatch.

Arbitrary bytes (and arbitrary well-formed frames, which reach further) from the guest must never raise
anything but ``FrameError`` from the decoder, never end the connection through an internal error, and
never make the host hold more than its bounds.
"""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from clawpot.agent.protocol import (
    HEADER_SIZE,
    MAX_PAYLOAD,
    FrameDecoder,
    FrameError,
    FrameType,
    encode_frame,
    encode_json,
)
from clawpot.agent_client.connection import AgentConnection, AgentInfo, RunState
from clawpot.limits import AGENT_HOST_BUFFER_BUDGET, AGENT_RECEIVE_WINDOW

FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@FUZZ
@given(st.lists(st.binary(max_size=4096), max_size=20))
def test_decoder_raises_only_frame_error_and_stays_bounded(chunks: list[bytes]) -> None:
    decoder = FrameDecoder()
    try:
        for chunk in chunks:
            decoder.feed(chunk)
            while (frame := decoder.next()) is not None:
                assert len(frame.payload) <= MAX_PAYLOAD
            # What waits unparsed is less than one frame.
            assert len(decoder.rest()) < HEADER_SIZE + MAX_PAYLOAD
    except FrameError:
        pass


_payloads = st.one_of(
    st.binary(max_size=512),
    st.sampled_from(
        [
            b"",
            b"{}",
            b"[" * 5000,
            encode_json({"code": "\x1b[2J" * 50, "message": "\x1b]0;t\x07" * 500}),
            encode_json({"pid": "nope"}),
            b"\xff\xff\xff\xff",
            b"\x00\x10\x00\x00",
        ]
    ),
)
_frames = st.builds(
    encode_frame,
    st.one_of(st.sampled_from(list(FrameType)), st.integers(0, 255)),
    st.one_of(st.sampled_from([0, 0, 1, 2, 3]), st.integers(0, 2**32 - 1)),
    _payloads,
    st.integers(0, 255),
)
# Mostly well-formed frames (they reach the dispatch), then maybe garbage (it reaches the decoder).
_wire = st.builds(
    lambda frames, tail: b"".join(frames) + tail,
    st.lists(_frames, max_size=40),
    st.one_of(st.just(b""), st.binary(max_size=64)),
)


async def _run_connection(data: bytes) -> tuple[AgentConnection, str, list[int]]:
    host, guest = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    reader, writer = await asyncio.open_unix_connection(sock=host)
    conn = AgentConnection(reader, writer, "fuzz", AgentInfo(1, 1, "fuzz", True), b"")
    streams = [conn.open_stream({"op": "exec", "argv": ["true"]}) for _ in range(3)]
    peak = [0, 0]
    dispatch = conn._dispatch

    def measured(frame: object) -> None:
        dispatch(frame)  # type: ignore[arg-type]
        peak[0] = max(peak[0], conn.buffered)
        peak[1] = max(peak[1], max(sum(len(getattr(i, "data", b"")) for i in s._items) for s in streams))

    conn._dispatch = measured  # type: ignore[method-assign]
    guest.setblocking(False)
    await asyncio.get_running_loop().sock_sendall(guest, data)
    guest.shutdown(socket.SHUT_WR)
    async with asyncio.timeout(10):
        reason = await conn.wait_closed()
    await conn.close()
    guest.close()
    return conn, reason, peak


@FUZZ
@given(data=_wire)
# Cases that once broke a host (or would have): they run every time, before the random ones.
@example(data=encode_frame(FrameType.ERROR, 0, b"[" * 5000))
@example(data=encode_frame(FrameType.PING, 0, bytes(MAX_PAYLOAD)) * 40)
@example(data=encode_frame(FrameType.DATA, 1, b"", 1) * 2000)
@example(data=encode_frame(FrameType.INFO, 2, b"{}") * 20)
@example(data=encode_frame(FrameType.END, 1, b"{}") + encode_frame(FrameType.DATA, 1, b"x") * 2000)
def test_dispatch_of_arbitrary_frames_is_bounded(data: bytes, caplog: pytest.LogCaptureFixture) -> None:
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="clawpot.agent_client"):
        conn, reason, (peak_buffered, peak_data) = asyncio.run(_run_connection(data))
    assert conn.state is RunState.CLOSED
    assert "internal error" not in reason, reason
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert peak_buffered <= AGENT_HOST_BUFFER_BUDGET
    assert peak_data <= AGENT_RECEIVE_WINDOW
    # Either an ordinary end of the stream, or a violation that says why.
    assert conn.violation is None or reason.startswith("guest violation")
