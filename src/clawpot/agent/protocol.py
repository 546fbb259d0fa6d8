"""The agent wire contract, shared by the guest agent and the host client.

Standard library only: this module is copied into the guest with the rest of ``clawpot.agent``.
docs/agent-protocol.md describes the protocol in prose; this module is its single definition.

Shape: a one-line text handshake (host ``CLAWPOT-HELLO``, agent ``CLAWPOT-WELCOME``) that both sides can
find in a stream full of stale bytes, then binary frames ``magic type flags stream length payload``
multiplexing many sessions (streams) over one byte stream, with per-stream credit windows.
"""

from __future__ import annotations

import enum
import json
import re
import struct
from dataclasses import dataclass
from typing import Any

# vsock port the agent listens on (Firecracker hybrid vsock: host sends "CONNECT 10051\n").
AGENT_VSOCK_PORT = 10051
# Name of the virtio-serial port carrying the agent channel under QEMU without vhost-vsock;
# the guest finds it by scanning /sys/class/virtio-ports/*/name.
SERIAL_PORT_NAME = "org.clawpot.agent.0"
# Printed once on the serial console when the agent is listening on every channel it found.
READY_LINE = "CLAWPOT-AGENT-READY"

PROTOCOL_VERSION = 1
MIN_PROTOCOL_VERSION = 1

# Frame header: magic (2 bytes, not ASCII so a handshake line never parses as a header), type, flags,
# stream id, payload length. Network byte order.
MAGIC = b"\xc1\xa9"
HEADER = struct.Struct("!2sBBII")
HEADER_SIZE = HEADER.size
MAX_PAYLOAD = 64 * 1024
# Credit each side starts with per stream and direction; the receiver tops it up with WINDOW frames as it
# consumes data, so nobody ever buffers more than this per stream.
DEFAULT_WINDOW = 256 * 1024
MAX_WINDOW = 1 << 30
MAX_SESSIONS = 64
MAX_LINE = 1024

HELLO = b"CLAWPOT-HELLO "
WELCOME = b"CLAWPOT-WELCOME "
REJECT = b"CLAWPOT-REJECT "
_NONCE = re.compile(r"[A-Za-z0-9_-]{8,64}")

SIGNAL_PAYLOAD = struct.Struct("!IB")  # signal number, 1 = whole process group
RESIZE_PAYLOAD = struct.Struct("!HH")  # rows, cols
WINDOW_PAYLOAD = struct.Struct("!I")  # credit increment in bytes


class FrameType(enum.IntEnum):
    PING = 0x01  # stream 0, either way; answered by PONG with the same payload
    PONG = 0x02
    ERROR = 0x03  # JSON {code, message, fatal}; stream 0: about the connection, else: the stream failed
    OPEN = 0x10  # host: start a session; JSON {"op": ..., ...}
    DATA = 0x11  # flags = Pipe
    EOF = 0x12  # flags = Pipe; no more DATA on that pipe
    WINDOW = 0x13  # credit for DATA in the other direction
    SIGNAL = 0x14  # host: SIGNAL_PAYLOAD
    RESIZE = 0x15  # host: RESIZE_PAYLOAD
    END = 0x16  # agent: JSON result; the stream is finished
    CANCEL = 0x17  # host: abort the session
    INFO = 0x18  # agent: JSON about a started session (pid, file size)


class Pipe(enum.IntEnum):
    """Which byte stream of a session a DATA/EOF frame belongs to. File bodies travel as STDIN (upload)
    and STDOUT (download)."""

    STDIN = 0
    STDOUT = 1
    STDERR = 2


class ErrorCode(enum.StrEnum):
    BAD_FRAME = "bad_frame"
    FRAME_TOO_LARGE = "frame_too_large"
    UNKNOWN_TYPE = "unknown_type"
    UNEXPECTED_FRAME = "unexpected_frame"
    UNKNOWN_STREAM = "unknown_stream"
    STREAM_IN_USE = "stream_in_use"
    TOO_MANY_SESSIONS = "too_many_sessions"
    BAD_REQUEST = "bad_request"
    UNKNOWN_OP = "unknown_op"
    SPAWN_FAILED = "spawn_failed"
    IO_ERROR = "io_error"
    WINDOW_EXCEEDED = "window_exceeded"
    CANCELLED = "cancelled"
    NOT_SUPPORTED = "not_supported"
    INTERNAL = "internal"
    UNKNOWN_USER = "unknown_user"  # a filesystem operation named a user the guest does not have
    NOT_FOUND = "not_found"  # a managed process (proc_*) with that pid or tag does not exist


@dataclass(frozen=True, slots=True)
class Frame:
    type: int
    stream: int
    flags: int
    payload: bytes


class FrameError(Exception):
    """The byte stream cannot be parsed any further (always fatal for the connection)."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def encode_frame(ftype: int, stream: int, payload: bytes = b"", flags: int = 0) -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"frame payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return HEADER.pack(MAGIC, ftype, flags, stream, len(payload)) + payload


class FrameDecoder:
    """Incremental frame parser: ``feed`` bytes, then call ``next`` until it returns None.

    Frames are parsed in place in the chunk last fed; only a frame split across chunks is carried over
    (at most one frame, in ``_carry``). Each payload is copied once, into the ``bytes`` handed out.
    """

    def __init__(self) -> None:
        self._carry = bytearray()  # the start of a frame the chunk ended in the middle of
        self._chunk = b""
        self._pos = 0  # parsed up to here in _chunk

    def feed(self, data: bytes) -> None:
        if self._pos < len(self._chunk):
            self._carry += memoryview(self._chunk)[self._pos :]
        self._chunk = data if isinstance(data, bytes) else bytes(data)
        self._pos = 0

    def next(self) -> Frame | None:
        if self._carry:
            return self._next_carried()
        chunk, pos = self._chunk, self._pos
        if len(chunk) - pos < HEADER_SIZE:
            return None
        ftype, flags, stream, length = _parse_header(chunk, pos)
        end = pos + HEADER_SIZE + length
        if len(chunk) < end:
            return None
        self._pos = end
        return Frame(ftype, stream, flags, chunk[pos + HEADER_SIZE : end])

    def _next_carried(self) -> Frame | None:
        """The frame that starts in the carry, completed from the chunk."""
        carry, chunk = self._carry, self._chunk
        if len(carry) < HEADER_SIZE:
            take = min(HEADER_SIZE - len(carry), len(chunk) - self._pos)
            carry += chunk[self._pos : self._pos + take]
            self._pos += take
            if len(carry) < HEADER_SIZE:
                return None
        ftype, flags, stream, length = _parse_header(carry, 0)
        size = HEADER_SIZE + length
        if len(carry) < size:
            take = min(size - len(carry), len(chunk) - self._pos)
            carry += chunk[self._pos : self._pos + take]
            self._pos += take
            if len(carry) < size:
                return None
        payload = bytes(memoryview(carry)[HEADER_SIZE:size])
        del carry[:size]  # more only when fed twice without draining
        return Frame(ftype, stream, flags, payload)

    def rest(self) -> bytes:
        """Unparsed bytes (used to rescan for a handshake after a framing error)."""
        return bytes(self._carry) + self._chunk[self._pos :]


def _parse_header(buf: bytes | bytearray, pos: int) -> tuple[int, int, int, int]:
    magic, ftype, flags, stream, length = HEADER.unpack_from(buf, pos)
    if magic != MAGIC:
        raise FrameError(ErrorCode.BAD_FRAME, f"bad frame magic {bytes(magic)!r}")
    if length > MAX_PAYLOAD:
        raise FrameError(ErrorCode.FRAME_TOO_LARGE, f"frame of {length} bytes exceeds {MAX_PAYLOAD}")
    return ftype, flags, stream, length


def encode_json(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def decode_json(payload: bytes) -> dict[str, Any]:
    """Parse a JSON object payload; ValueError with a short reason otherwise."""
    try:
        obj = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"payload is not valid JSON: {exc}") from None
    except RecursionError:  # e.g. 30,000 nested brackets: valid JSON, but not for us
        raise ValueError("payload is not valid JSON: nested too deeply") from None
    if not isinstance(obj, dict):
        raise ValueError("payload is not a JSON object")
    return obj


def error_payload(code: str, message: str, *, fatal: bool = False, errno: str | None = None) -> bytes:
    """An ERROR payload; ``errno`` names the OS error behind an ``io_error`` (``ENOENT``, ``EEXIST``...)
    so the host can tell a missing file from a full disk without parsing the message."""
    body: dict[str, Any] = {"code": str(code), "message": message[:4000], "fatal": fatal}
    if errno is not None:
        body["errno"] = errno
    return encode_json(body)


# --- handshake ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hello:
    min_version: int
    max_version: int
    nonce: str


def valid_nonce(nonce: str) -> bool:
    return _NONCE.fullmatch(nonce) is not None


def hello_line(nonce: str) -> bytes:
    return HELLO + f"{MIN_PROTOCOL_VERSION} {PROTOCOL_VERSION} {nonce}\n".encode()


def parse_hello(line: bytes) -> Hello:
    """Parse ``CLAWPOT-HELLO <min> <max> <nonce>`` (without the newline)."""
    parts = line.split(b" ")
    if len(parts) != 4 or parts[0] + b" " != HELLO:
        raise ValueError("malformed hello line")
    try:
        lo, hi, nonce = int(parts[1]), int(parts[2]), parts[3].decode("ascii")
    except (ValueError, UnicodeDecodeError):
        raise ValueError("malformed hello line") from None
    if not valid_nonce(nonce) or lo > hi or lo < 0:
        raise ValueError("malformed hello line")
    return Hello(lo, hi, nonce)


def negotiate(hello: Hello) -> int | None:
    """The highest version both sides speak, or None."""
    version = min(hello.max_version, PROTOCOL_VERSION)
    return version if version >= max(hello.min_version, MIN_PROTOCOL_VERSION) else None


def welcome_line(nonce: str, version: int, info: dict[str, Any]) -> bytes:
    return WELCOME + f"{nonce} {version} ".encode() + encode_json(info) + b"\n"


def reject_line(nonce: str, reason: str) -> bytes:
    clean = reason.replace("\n", " ")[:200]
    return REJECT + f"{nonce} {clean}\n".encode()


def find_line(buf: bytes | bytearray, prefix: bytes, start: int = 0) -> tuple[int, int] | None:
    """Locate a complete line beginning with ``prefix``: (index of prefix, index of its newline)."""
    at = buf.find(prefix, start)
    if at < 0:
        return None
    nl = buf.find(b"\n", at)
    if nl < 0:
        return None
    return at, nl
