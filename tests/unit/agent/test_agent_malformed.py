"""Bad input on the wire: every case gets an ERROR (or a REJECT line) and the connection either carries on
or closes cleanly; the agent itself never goes down (the module fixture checks its log for tracebacks)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from agent_harness import AgentProcess, RawConnection, kill_quietly, pid_alive, wait_until

from clawpot.agent.protocol import (
    HEADER,
    MAGIC,
    MAX_PAYLOAD,
    MAX_SESSIONS,
    FrameType,
    Pipe,
    decode_json,
    encode_json,
)


def _open(raw: RawConnection, stream: int, request: object) -> None:
    payload = request if isinstance(request, bytes) else json.dumps(request).encode()
    raw.send(FrameType.OPEN, stream, payload)


@pytest.fixture
def raw(agent: AgentProcess) -> RawConnection:
    conn = RawConnection(agent.socket)
    conn.handshake()
    return conn


@pytest.fixture(autouse=True)
def agent_survives(agent: AgentProcess) -> object:
    yield
    assert agent.proc.poll() is None, "the agent died"
    with RawConnection(agent.socket) as fresh:
        fresh.handshake()
        assert fresh.ping_ok()


# --- handshake ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", b"expected a CLAWPOT-HELLO line"),
        (b"CLAWPOT-HELLO 1 1 short\n", b"malformed hello line"),
        (b"CLAWPOT-HELLO one two abcdefgh\n", b"malformed hello line"),
        (b"CLAWPOT-HELLO " + b"x" * 2000, b"hello line too long"),
        (b"\xc1\xa9" + bytes(10), b"expected a CLAWPOT-HELLO line"),
    ],
)
def test_bad_hello_is_rejected_and_closed(agent: AgentProcess, data: bytes, reason: bytes) -> None:
    with RawConnection(agent.socket) as conn:
        conn.send_raw(data)
        line = conn.read_line()
        assert line.startswith(b"CLAWPOT-REJECT - ")
        assert reason in line
        assert conn.at_eof()


def test_incompatible_version_is_rejected(agent: AgentProcess) -> None:
    with RawConnection(agent.socket) as conn:
        conn.send_raw(b"CLAWPOT-HELLO 7 9 futurehost1\n")
        line = conn.read_line()
        assert line.startswith(b"CLAWPOT-REJECT futurehost1 no common protocol version")
        assert conn.at_eof()


# --- framing: fatal ----------------------------------------------------------------------------------


def test_bad_magic_gets_fatal_error_then_close(raw: RawConnection) -> None:
    raw.send_raw(b"XX" + bytes(10))
    error = raw.error(0)
    assert error["code"] == "bad_frame"
    assert error["fatal"] is True
    assert raw.at_eof()


def test_oversized_frame_gets_fatal_error_then_close(raw: RawConnection) -> None:
    raw.send_raw(HEADER.pack(MAGIC, FrameType.DATA, 0, 1, MAX_PAYLOAD + 1))
    error = raw.error(0)
    assert error["code"] == "frame_too_large"
    assert raw.at_eof()


def test_truncated_frame_then_disconnect(agent: AgentProcess) -> None:
    with RawConnection(agent.socket) as conn:
        conn.handshake()
        conn.send_raw(HEADER.pack(MAGIC, FrameType.OPEN, 0, 1, 500) + b'{"op": "ex')
    # agent_survives checks the agent is still serving


# --- framing: the connection survives ----------------------------------------------------------------


def test_unknown_frame_type(raw: RawConnection) -> None:
    raw.send(0x7F, 0, b"whatever")
    assert raw.error(0)["code"] == "unknown_type"
    assert raw.ping_ok()


@pytest.mark.parametrize("ftype", [FrameType.PONG, FrameType.END, FrameType.INFO])
def test_agent_only_frames(raw: RawConnection, ftype: FrameType) -> None:
    raw.send(ftype, 0, b"{}")
    assert raw.error(0)["code"] == "unexpected_frame"
    assert raw.ping_ok()


@pytest.mark.parametrize(
    ("request_payload", "code"),
    [
        (b"{not json", "bad_request"),
        (b"\xff\xfe", "bad_request"),
        (b"[1, 2]", "bad_request"),
        ({"argv": ["true"]}, "unknown_op"),
        ({"op": "format-disk"}, "unknown_op"),
        ({"op": "exec"}, "bad_request"),
        ({"op": "exec", "argv": []}, "bad_request"),
        ({"op": "exec", "argv": [1, 2]}, "bad_request"),
        ({"op": "exec", "argv": ["a\u0000b"]}, "bad_request"),
        ({"op": "exec", "argv": ["true"], "command": "true"}, "bad_request"),
        ({"op": "exec", "argv": ["true"], "env": {"A": 1}}, "bad_request"),
        ({"op": "exec", "argv": ["true"], "env": {"A=B": "x"}}, "bad_request"),
        ({"op": "exec", "argv": ["true"], "timeout": -1}, "bad_request"),
        ({"op": "exec", "argv": ["true"], "timeout": "soon"}, "bad_request"),
        ({"op": "exec", "argv": ["true"], "pty": {"rows": 0, "cols": 80}}, "bad_request"),
        ({"op": "exec", "argv": ["true"], "window": 0}, "bad_request"),
        ({"op": "exec", "argv": ["true"], "stdin": "yes"}, "bad_request"),
        ({"op": "exec", "argv": ["true"], "cwd": 5}, "bad_request"),
        ({"op": "put", "path": "relative/file"}, "bad_request"),
        ({"op": "put", "path": "/tmp/x", "mode": 0o17777}, "bad_request"),
        ({"op": "put", "path": "/nonexistent-dir/file"}, "io_error"),
        ({"op": "get", "path": "/nonexistent-file"}, "io_error"),
        ({"op": "get", "path": "/"}, "bad_request"),
        ({"op": "get"}, "bad_request"),
    ],
)
def test_bad_open_fails_only_that_stream(raw: RawConnection, request_payload: object, code: str) -> None:
    _open(raw, 1, request_payload)
    error = raw.error()
    assert error["code"] == code, error
    assert error["fatal"] is False
    assert raw.ping_ok()
    _open(raw, 2, {"op": "exec", "argv": ["true"], "stdin": False})
    assert decode_json(raw.frame_of(FrameType.END, stream=2).payload)["exit_code"] == 0


def test_stream_zero_and_reused_ids(raw: RawConnection) -> None:
    _open(raw, 0, {"op": "exec", "argv": ["true"]})
    assert raw.error(0)["code"] == "bad_request"
    _open(raw, 5, {"op": "exec", "argv": ["true"], "stdin": False})
    raw.frame_of(FrameType.END, stream=5)
    _open(raw, 5, {"op": "exec", "argv": ["true"]})
    assert raw.error(0)["code"] == "stream_in_use"
    _open(raw, 3, {"op": "exec", "argv": ["true"]})  # ids must increase
    assert raw.error(0)["code"] == "stream_in_use"
    assert raw.ping_ok()


def test_frames_for_unknown_streams(raw: RawConnection) -> None:
    raw.send(FrameType.DATA, 42, b"hello", Pipe.STDIN)
    assert raw.error(0)["code"] == "unknown_stream"
    # A late frame for a stream that already ended is dropped silently.
    _open(raw, 1, {"op": "exec", "argv": ["true"], "stdin": False})
    raw.frame_of(FrameType.END, stream=1)
    raw.send(FrameType.WINDOW, 1, struct.pack("!I", 100))
    assert raw.ping_ok()


def test_window_overrun_fails_the_stream_and_kills_it(raw: RawConnection) -> None:
    _open(raw, 1, {"op": "exec", "argv": ["sleep", "300"]})
    pid = decode_json(raw.frame_of(FrameType.INFO, stream=1).payload)["pid"]
    assert isinstance(pid, int)
    try:
        # sleep never reads: once its pipe (64 KiB) and the 256 KiB window are full, DATA overruns.
        for _ in range(10):
            raw.send(FrameType.DATA, 1, bytes(MAX_PAYLOAD), Pipe.STDIN)
        assert raw.error(1)["code"] == "window_exceeded"
        assert wait_until(lambda: not pid_alive(pid))
        assert raw.ping_ok()
    finally:
        kill_quietly(pid)


@pytest.mark.parametrize(
    ("ftype", "payload", "flags"),
    [
        (FrameType.WINDOW, b"\x00", 0),
        (FrameType.WINDOW, struct.pack("!I", 2**31), 0),
        (FrameType.SIGNAL, b"\x00\x00", 0),
        (FrameType.SIGNAL, struct.pack("!IB", 999, 1), 0),
        (FrameType.RESIZE, b"\x01", 0),
        (FrameType.DATA, b"x", Pipe.STDOUT),
        (FrameType.EOF, b"", Pipe.STDERR),
    ],
)
def test_bad_stream_frames_fail_the_stream(
    raw: RawConnection, ftype: FrameType, payload: bytes, flags: int
) -> None:
    _open(raw, 1, {"op": "exec", "argv": ["sleep", "300"]})
    pid = decode_json(raw.frame_of(FrameType.INFO, stream=1).payload)["pid"]
    assert isinstance(pid, int)
    try:
        raw.send(ftype, 1, payload, flags)
        assert raw.error(1)["code"] == "bad_request"
        assert wait_until(lambda: not pid_alive(pid))
        assert raw.ping_ok()
    finally:
        kill_quietly(pid)


def test_frames_a_session_does_not_take(raw: RawConnection, tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"data")
    _open(raw, 1, {"op": "get", "path": str(target)})
    raw.frame_of(FrameType.END, stream=1)
    _open(raw, 2, {"op": "put", "path": str(tmp_path / "g")})
    raw.send(FrameType.SIGNAL, 2, struct.pack("!IB", 15, 1))
    assert raw.error(2)["code"] == "unexpected_frame"
    assert not list(tmp_path.glob(".g.*")), "the failed upload left its temporary file behind"


def test_too_many_sessions(raw: RawConnection) -> None:
    pids = []
    try:
        for sid in range(1, MAX_SESSIONS + 1):
            _open(raw, sid, {"op": "exec", "argv": ["sleep", "300"], "stdin": False})
            pids.append(decode_json(raw.frame_of(FrameType.INFO, stream=sid).payload)["pid"])
        _open(raw, MAX_SESSIONS + 1, {"op": "exec", "argv": ["true"]})
        assert raw.error(MAX_SESSIONS + 1)["code"] == "too_many_sessions"
        raw.close()  # disconnecting kills all of them
        assert wait_until(lambda: not any(pid_alive(p) for p in pids if isinstance(p, int)))
    finally:
        for pid in pids:
            if isinstance(pid, int):
                kill_quietly(pid)


def test_host_error_frames_are_only_logged(raw: RawConnection) -> None:
    raw.send(FrameType.ERROR, 0, encode_json({"code": "x", "message": "host-side trouble"}))
    assert raw.ping_ok()


def test_upload_cut_off_by_a_disconnect_leaves_nothing(agent: AgentProcess, tmp_path: Path) -> None:
    with RawConnection(agent.socket) as conn:
        conn.handshake()
        _open(conn, 1, {"op": "put", "path": str(tmp_path / "partial.bin")})
        conn.send(FrameType.DATA, 1, bytes(1000), Pipe.STDIN)
        assert conn.ping_ok()  # the agent has the data and a temporary file by now
        [temporary] = [p.name for p in tmp_path.iterdir()]
        assert temporary.startswith(".partial.bin.")
    assert wait_until(lambda: not list(tmp_path.iterdir()))
