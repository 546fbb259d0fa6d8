"""Every frame a guest can send has a bound on the host side: a hostile agent (a thread on the guest end
of a real socketpair) floods, lies and stops reading; the real ``AgentClient`` must stay bounded in
memory and log, and drop the connection with a ``violation`` saying why."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
import time
from pathlib import Path

import pytest
from guest_peer import Peer, hostile_agent

from clawpot.agent.protocol import (
    HEADER,
    HEADER_SIZE,
    MAGIC,
    MAX_PAYLOAD,
    MAX_WINDOW,
    WINDOW_PAYLOAD,
    FrameType,
    Pipe,
    encode_frame,
    encode_json,
)
from clawpot.agent_client import AgentClient, AgentDisconnected, FileTooLarge, ProtocolError, RemoteError
from clawpot.limits import (
    AGENT_HOST_BUFFER_BUDGET,
    AGENT_IGNORED_FRAMES_BURST,
    AGENT_LOG_BURST,
    AGENT_PONG_HIGH_WATER,
    AGENT_STREAM_CONTROL_FRAMES,
)

BIG_PING = encode_frame(FrameType.PING, 0, bytes(MAX_PAYLOAD))
ESCAPES = "\x1b]0;pwned\x07\x1b[2J\r\nFAKE LOG LINE "


async def dropped(client: AgentClient, within: float = 20.0) -> str:
    async with asyncio.timeout(within):
        return await client.wait_closed()


async def test_ping_flood_without_reading_is_bounded_and_dropped() -> None:
    """Defect 1 of issue 10: 64 KiB PINGs, PONGs never read. The host stops answering once its unsent
    output passes the high-water mark, and drops the flood."""
    async with hostile_agent(lambda peer: peer.flood(BIG_PING, 20_000)) as h:
        reason = await dropped(h.client)
        assert h.client.violation is not None
        assert "flood" in h.client.violation and "PING" in h.client.violation
        assert reason.startswith("guest violation: ")
        assert not h.client.connected
        # Never more than the high-water mark plus the one PONG that crossed it.
        assert h.max_unsent <= AGENT_PONG_HIGH_WATER + HEADER_SIZE + MAX_PAYLOAD
        assert h.peer.sent_frames <= 2 * AGENT_IGNORED_FRAMES_BURST


async def test_a_few_pings_are_answered() -> None:
    answers: list[bytes] = []

    def scenario(peer: Peer) -> None:
        for i in range(3):
            peer.send(FrameType.PING, 0, b"ping%d" % i)
        data = b""
        while len(data) < 3 * (HEADER_SIZE + 5):
            data += peer.sock.recv(4096)
        answers.append(data)

    async with hostile_agent(scenario) as h:
        async with asyncio.timeout(10):
            while not answers:  # noqa: ASYNC110 - filled by the peer's thread
                await asyncio.sleep(0.01)
        assert answers == [b"".join(encode_frame(FrameType.PONG, 0, b"ping%d" % i) for i in range(3))]
        assert h.client.connected and h.client.violation is None


async def test_guest_that_never_reads_trips_the_buffer_budget() -> None:
    """Our own output piles up when the guest stops reading: past the budget the connection is dropped
    (and the unsent bytes freed), instead of growing with every request."""
    async with hostile_agent(lambda peer: peer._stop.wait(30)) as h:
        big_env = {"X": "y" * (MAX_PAYLOAD - 200)}
        opened = 0
        with pytest.raises(AgentDisconnected, match="budget"):
            for _ in range(1000):
                h.conn.open_stream({"op": "exec", "argv": ["true"], "env": big_env})
                opened += 1
        assert h.client.violation is not None and "does not read" in h.client.violation
        assert opened <= AGENT_HOST_BUFFER_BUDGET // (MAX_PAYLOAD - 300) + 1
        assert h.conn._writer.transport.get_write_buffer_size() == 0  # aborted, not kept for a flush


async def test_error_flood_log_is_short_escaped_and_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    """Defect 4a: ERROR frames were logged in full. Now each line is cut and escaped, and a flood is
    rate-limited and then dropped."""
    caplog.set_level(logging.DEBUG, logger="clawpot.agent_client")
    message = ESCAPES + "A" * 60_000
    frame = encode_frame(
        FrameType.ERROR, 0, encode_json({"code": "x" * 1000, "message": message, "fatal": False})
    )
    async with hostile_agent(lambda peer: peer.flood(frame, 5000)) as h:
        await dropped(h.client)
        assert h.client.violation is not None and "stream-0 ERROR" in h.client.violation
    records = [r for r in caplog.records if r.name.startswith("clawpot.agent_client")]
    text = "\n".join(r.getMessage() for r in records)
    assert len(records) <= AGENT_LOG_BURST + 2, text
    assert len(text) <= 16 * 1024
    assert "\x1b" not in text and "\x07" not in text and "\r" not in text
    assert all("\n" not in r.getMessage() for r in records)
    assert "\\x1b]0;pwned\\x07" in text  # escaped, still readable


async def test_log_limit_holds_across_reconnects(caplog: pytest.LogCaptureFixture) -> None:
    """The rate limit is per VM (its endpoint name), so dropping and reconnecting does not reset it."""
    caplog.set_level(logging.DEBUG, logger="clawpot.agent_client")
    frame = encode_frame(FrameType.ERROR, 0, encode_json({"code": "c", "message": "m"}))
    for _ in range(4):
        async with hostile_agent(lambda peer: peer.flood(frame, 3000)) as h:
            await dropped(h.client)
    lines = [r for r in caplog.records if r.name.startswith("clawpot.agent_client")]
    assert len(lines) <= AGENT_LOG_BURST + 4 + 2


async def test_frame_for_a_stream_never_opened_is_a_violation() -> None:
    async with hostile_agent(lambda peer: peer.send(FrameType.DATA, 77, b"x", Pipe.STDOUT)) as h:
        await dropped(h.client)
        assert h.client.violation is not None and "stream 77, never opened" in h.client.violation


async def test_flood_on_a_closed_stream_is_dropped() -> None:
    def scenario(peer: Peer) -> None:
        peer.send(FrameType.END, 1, encode_json({"ok": True}))
        peer.flood(encode_frame(FrameType.DATA, 1, b"late", Pipe.STDOUT), 20_000)

    async with hostile_agent(lambda peer: None) as h:
        stream = h.conn.open_stream({"op": "exec", "argv": ["true"]})
        flooding = asyncio.create_task(asyncio.to_thread(scenario, h.peer))
        assert (await stream.recv()).type == FrameType.END
        await flooding
        await dropped(h.client)
        assert h.client.violation is not None and "closed stream" in h.client.violation


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (HEADER.pack(MAGIC, FrameType.DATA, 0, 1, 0xFFFFFFFF), "exceeds"),
        (HEADER.pack(b"GE", FrameType.DATA, 0, 1, 4) + b"abcd", "bad frame magic"),
    ],
    ids=["length-0xffffffff", "bad-magic"],
)
async def test_wrong_lengths_and_garbage_are_violations(data: bytes, expected: str) -> None:
    async with hostile_agent(lambda peer: peer.send_raw(data)) as h:
        await dropped(h.client)
        assert h.client.violation is not None and expected in h.client.violation


async def test_giant_and_deep_json_in_a_stream_error() -> None:
    async with hostile_agent(lambda peer: None) as h:
        s1 = h.conn.open_stream({"op": "exec", "argv": ["true"]})
        s2 = h.conn.open_stream({"op": "exec", "argv": ["true"]})
        await h.send(FrameType.ERROR, 1, b"[" * (MAX_PAYLOAD - 1))
        body = {"code": ESCAPES * 100, "message": ESCAPES + "B" * 60_000}
        await h.send(FrameType.ERROR, 2, json.dumps(body).encode()[:MAX_PAYLOAD])
        await h.send(FrameType.ERROR, 2, encode_json(body)[: MAX_PAYLOAD - 10])
        with pytest.raises(RemoteError) as deep:
            await s1.recv_until(FrameType.END)
        assert deep.value.code == "unknown"
        with pytest.raises(RemoteError) as giant:
            await s2.recv_until(FrameType.END)
        assert len(str(giant.value)) <= 700
        assert "\x1b" not in str(giant.value) and "\n" not in str(giant.value)
        assert h.client.connected and h.client.violation is None  # a failed stream, not a bad guest


async def test_tiny_data_frames_cost_their_bytes_not_an_object_each() -> None:
    count = 50_000
    async with hostile_agent(lambda peer: None) as h:
        stream = h.conn.open_stream({"op": "exec", "argv": ["true"]})
        frames = b"".join(
            encode_frame(FrameType.DATA, 1, bytes([i % 251]), Pipe.STDOUT) for i in range(count)
        )
        await h.send_raw(frames + encode_frame(FrameType.END, 1, encode_json({"exit_code": 0})))
        async with asyncio.timeout(10):
            while stream.final is None:  # noqa: ASYNC110 - the reader task sets it, no event to wait on
                await asyncio.sleep(0.01)
        assert len(stream._items) <= count // MAX_PAYLOAD + 2  # coalesced while waiting
        got = bytearray()
        while (frame := await stream.recv()).type == FrameType.DATA:
            got += frame.payload
        assert bytes(got) == bytes(i % 251 for i in range(count))


async def test_empty_data_flood_is_dropped() -> None:
    async with hostile_agent(lambda peer: None) as h:
        h.conn.open_stream({"op": "exec", "argv": ["true"]})
        await asyncio.to_thread(h.peer.flood, encode_frame(FrameType.DATA, 1, b"", Pipe.STDOUT), 20_000)
        await dropped(h.client)
        assert h.client.violation is not None and "empty DATA" in h.client.violation


async def test_info_flood_on_a_stream_is_dropped() -> None:
    async with hostile_agent(lambda peer: None) as h:
        h.conn.open_stream({"op": "exec", "argv": ["true"]})
        info = encode_frame(FrameType.INFO, 1, encode_json({"pid": 1, "pad": "x" * 60_000}))
        await asyncio.to_thread(h.peer.flood, info, AGENT_STREAM_CONTROL_FRAMES + 5)
        await dropped(h.client)
        assert h.client.violation is not None and "INFO/EOF" in h.client.violation
        assert h.max_buffered <= AGENT_STREAM_CONTROL_FRAMES * (MAX_PAYLOAD + HEADER_SIZE)


async def test_window_credit_is_clamped() -> None:
    async with hostile_agent(lambda peer: None) as h:
        stream = h.conn.open_stream({"op": "exec", "argv": ["true"]})
        await h.send_raw(encode_frame(FrameType.WINDOW, 1, WINDOW_PAYLOAD.pack(0xFFFFFFFF)) * 2000)
        await h.send_raw(encode_frame(FrameType.WINDOW, 1, b"bad"))
        await h.send(FrameType.END, 1, b"{}")
        assert (await stream.recv()).type == FrameType.END
        assert stream.send_window == MAX_WINDOW
        assert h.client.connected


async def test_stalled_guest_times_out_without_a_violation() -> None:
    async with hostile_agent(lambda peer: peer._stop.wait(30)) as h:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                await h.client.ping()
        assert h.client.connected and h.client.violation is None


async def test_ordinary_disconnect_is_not_a_violation() -> None:
    async with hostile_agent(lambda peer: peer.sock.shutdown(2)) as h:
        reason = await dropped(h.client)
        assert "closed the connection" in reason
        assert h.client.violation is None


async def test_handshake_flood_is_bounded_and_retryable() -> None:
    """A port full of junk instead of a WELCOME: the handshake gives up after a bounded number of bytes
    with an error ``wait_ready`` retries (not ProtocolError, which would mean "another protocol")."""
    junk = BIG_PING * 300  # ~19 MiB, over AGENT_HANDSHAKE_MAX_STALE

    def scenario(peer: Peer) -> None:
        peer.send_raw(junk)

    started = time.monotonic()
    with pytest.raises(AgentDisconnected, match="no handshake reply"):
        async with hostile_agent(scenario, handshake=False):
            pass
    assert time.monotonic() - started < 10


@pytest.mark.parametrize(
    ("info", "end"),
    [
        (b"[" * 5000, b"{}"),
        (b"not json", b"{}"),
        (encode_json({"pid": "1; rm -rf /"}), b"{}"),
        (encode_json({"pid": 1}), encode_json({"exit_code": "x" * 10_000})),
        (encode_json({"pid": 1}), encode_json({"exit_code": 2**40})),
        (encode_json({"pid": 1}), encode_json({"exit_code": 0, "signal": -9})),
        (encode_json({"pid": 1}), encode_json({"exit_code": 0, "duration": "NaN"})),
        (encode_json({"pid": 1}), b"[" * 5000),
    ],
    ids=[
        "deep-info",
        "info-not-json",
        "pid-string",
        "exit-string",
        "exit-huge",
        "signal-neg",
        "nan",
        "deep-end",
    ],
)
async def test_lying_exec_results_are_protocol_errors(info: bytes, end: bytes) -> None:
    """Guest-supplied results are checked field by field: a lie is a ProtocolError (which the server
    turns into UNAVAILABLE), never a ValueError or a number that breaks a protobuf field above."""

    def scenario(peer: Peer) -> None:
        peer.send(FrameType.INFO, 1, info)
        peer.send(FrameType.END, 1, end)

    async with hostile_agent(scenario) as h:
        with pytest.raises(ProtocolError, match="malformed"):
            proc = await h.client.exec(["true"])
            await proc.wait()


async def test_lying_file_info_is_a_protocol_error(tmp_path: Path) -> None:
    def scenario(peer: Peer) -> None:
        peer.send(FrameType.INFO, 1, encode_json({"size": 10, "mode": 2**40}))

    async with hostile_agent(scenario) as h:
        with pytest.raises(ProtocolError, match="mode"):
            await h.client.get_file("/etc/passwd", tmp_path / "out")
        assert not os.listdir(tmp_path)


async def test_get_file_stops_a_guest_sending_past_max_size_and_keeps_nothing(tmp_path: Path) -> None:
    def scenario(peer: Peer) -> None:
        peer.send(FrameType.INFO, 1, encode_json({"size": 4, "mode": 0o644}))  # a lie: 4 bytes...
        peer.send(FrameType.DATA, 1, b"x" * 6)  # ...then 6
        peer.send(FrameType.DATA, 1, b"x" * 6)

    async with hostile_agent(scenario) as h:
        with pytest.raises(FileTooLarge, match="more than 8 bytes"):
            await h.client.get_file("/big", tmp_path / "out", max_size=8)
        assert not os.listdir(tmp_path)


async def test_get_file_refuses_a_claimed_size_past_max_size(tmp_path: Path) -> None:
    def scenario(peer: Peer) -> None:
        peer.send(FrameType.INFO, 1, encode_json({"size": 300 << 20, "mode": 0o644}))

    async with hostile_agent(scenario) as h:
        with pytest.raises(FileTooLarge, match="reports 314572800 bytes"):
            await h.client.get_file("/big", tmp_path / "out", max_size=1 << 20)
        assert not os.listdir(tmp_path)


async def test_get_file_never_keeps_setuid_or_world_write(tmp_path: Path) -> None:
    def scenario(peer: Peer) -> None:
        peer.send(FrameType.INFO, 1, encode_json({"size": 3, "mode": 0o6777}))
        peer.send(FrameType.DATA, 1, b"abc")
        peer.send(FrameType.END, 1, encode_json({"ok": True}))

    async with hostile_agent(scenario) as h:
        info = await h.client.get_file("/suid", tmp_path / "out")
    assert info.mode == 0o6777  # what the guest said, reported as it is
    mode = (tmp_path / "out").stat().st_mode
    assert (tmp_path / "out").read_bytes() == b"abc"
    assert not mode & (stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX | stat.S_IWOTH)
