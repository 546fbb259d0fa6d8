"""A hostile program for INSIDE a guest: take the agent's virtio-serial port over and attack the host.

Copied into a VM and started in the background by tests/integration/test_hostile_guest_channel.py; it
runs on the guest's python3, standard library only. It does what the attacker of issue 10 did: SIGSTOP
the agent, then copy the agent's port fd with ``pidfd_getfd`` (a plain open of the port gets EBUSY, one
opener at a time), then speak to the host as if it were the agent:

    ping     64 KiB PING frames, never reading the PONGs
    error    stream-0 ERROR frames: escape sequences and a ~60 KiB message each
    unknown  frames for streams the host never opened
    lengths  wrong lengths: a 0xFFFFFFFF length prefix, lengths that do not match the bytes sent
    json     huge and deeply nested JSON in ERROR, INFO and END payloads
    stall    hold the port and never read or write

The flood modes start on the host's live connection (no handshake needed: the agent had done it), and
whenever the host drops them and connects again they answer its HELLO with a WELCOME and flood again,
so every reconnect the host makes during the attack meets the attacker. After ``duration`` seconds the
program lets the port go and SIGCONTs the agent, so the VM recovers, and writes what it sent as JSON.

Usage: python3 take_over_port.py MODE DURATION REPORT_PATH
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import signal
import struct
import sys
import time

SYS_PIDFD_OPEN = 434
SYS_PIDFD_GETFD = 438
MAGIC = b"\xc1\xa9"
HEADER = struct.Struct("!2sBBII")
MAX_PAYLOAD = 64 * 1024
PING, ERROR, DATA, END, INFO = 0x01, 0x03, 0x11, 0x16, 0x18
HELLO = b"CLAWPOT-HELLO "
START_DELAY = 1.0  # let the exec that started us finish before the agent is stopped


def frame(ftype: int, stream: int, payload: bytes = b"", flags: int = 0, length: int | None = None) -> bytes:
    return HEADER.pack(MAGIC, ftype, flags, stream, len(payload) if length is None else length) + payload


def error_json(code: str, message: str) -> bytes:
    return json.dumps({"code": code, "message": message, "fatal": False}).encode()


def flood_bytes(mode: str) -> bytes:
    """One round of the flood: a few hundred KiB of frames."""
    if mode == "ping":
        return frame(PING, 0, bytes(MAX_PAYLOAD)) * 4
    if mode == "error":
        text = "\x1b]0;pwned\x07\x1b[2J\r\nFORGED LOG LINE " + "E" * 60_000
        return frame(ERROR, 0, error_json("\x1b[31mevil", text)[:MAX_PAYLOAD]) * 4
    if mode == "unknown":
        return (
            b"".join(
                frame(t, s, b"x" * 1000, 1) for s in (0x7FFFFFFF, 4242, 1 << 31) for t in (DATA, END, INFO)
            )
            * 8
        )
    if mode == "lengths":
        return (
            frame(DATA, 1, b"short", 1, length=1000)  # says 1000, sends 5: eats the next headers
            + frame(PING, 0, b"", length=0xFFFFFFFF)
            + frame(ERROR, 0, b"{}", length=MAX_PAYLOAD + 1)
        ) * 64
    if mode == "json":
        deep = b"[" * (MAX_PAYLOAD - 1)
        wide = json.dumps({"code": "c", "message": "m", "k": ["x" * 10] * 5000})[:MAX_PAYLOAD].encode()
        return (
            frame(ERROR, 0, deep) + frame(INFO, 1, deep) + frame(END, 1, wide) + frame(ERROR, 1, deep)
        ) * 2
    raise SystemExit(f"unknown mode {mode}")


def find_agent() -> tuple[int, int]:
    """(pid, fd) of the agent's open virtio-serial port."""
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if b"clawpot_agent" not in f.read():
                    continue
            for fd in os.listdir(f"/proc/{entry}/fd"):
                if os.readlink(f"/proc/{entry}/fd/{fd}").startswith("/dev/vport"):
                    return int(entry), int(fd)
        except OSError:
            continue
    raise SystemExit("no agent with a virtio-serial port found")


def agent_state(pid: int) -> str:
    """The agent's state letter from /proc (T: stopped), once the stop has landed."""
    for _ in range(50):
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        if state in "Tt":
            break
        time.sleep(0.01)
    return state


def steal_fd(pid: int, target: int) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    pidfd = libc.syscall(SYS_PIDFD_OPEN, pid, 0)
    if pidfd < 0:
        raise OSError(ctypes.get_errno(), "pidfd_open")
    fd = libc.syscall(SYS_PIDFD_GETFD, pidfd, target, 0)
    os.close(pidfd)
    if fd < 0:
        raise OSError(ctypes.get_errno(), "pidfd_getfd")
    return int(fd)


class Attack:
    def __init__(self, fd: int, mode: str, deadline: float) -> None:
        self.fd = fd
        self.mode = mode
        self.deadline = deadline
        self.sent = 0
        self.handshakes = 0
        self.write_errors = 0
        os.set_blocking(fd, False)

    def flood(self) -> None:
        """Write until a write stays blocked for half a second (the host dropped us) or time is up."""
        chunk = flood_bytes(self.mode)
        view = memoryview(chunk)
        poller = select.poll()
        poller.register(self.fd, select.POLLOUT)
        while time.monotonic() < self.deadline:
            if not poller.poll(500):
                return
            try:
                n = os.write(self.fd, view[: 32 * 1024])
            except BlockingIOError:
                continue
            except OSError:
                self.write_errors += 1
                return
            self.sent += n
            view = view[n:] if n < len(view) else memoryview(chunk)

    def answer_hello(self) -> bool:
        """Wait for the host's next HELLO and answer it as the agent would; False at the deadline."""
        buf = b""
        while time.monotonic() < self.deadline:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                data = None
            except OSError:
                data = b""
            if not data:
                time.sleep(0.05)  # no host (read gives 0 again and again) or nothing yet
                continue
            buf = (buf + data)[-4096:]
            at = buf.rfind(HELLO)
            if at >= 0 and b"\n" in buf[at:]:
                nonce = buf[at:].split(b"\n", 1)[0].split(b" ")[3]
                info = json.dumps({"pid": 1, "hostname": "evil", "guest": True}).encode()
                if self.write_all(b"CLAWPOT-WELCOME " + nonce + b" 1 " + info + b"\n"):
                    self.handshakes += 1
                    return True
                return False
        return False

    def write_all(self, data: bytes) -> bool:
        """Write ``data`` whole (the port may still hold our stale flood); False at the deadline."""
        view = memoryview(data)
        poller = select.poll()
        poller.register(self.fd, select.POLLOUT)
        while view and time.monotonic() < self.deadline:
            poller.poll(100)
            try:
                view = view[os.write(self.fd, view) :]
            except BlockingIOError:
                continue
            except OSError:
                return False
        return not view

    def run(self) -> None:
        if self.mode == "stall":
            time.sleep(max(0.0, self.deadline - time.monotonic()))
            return
        while time.monotonic() < self.deadline:
            self.flood()
            self.answer_hello()


def main() -> None:
    mode, duration, report = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    time.sleep(START_DELAY)
    pid, target = find_agent()
    os.kill(pid, signal.SIGSTOP)
    started = time.monotonic()
    state = agent_state(pid)
    attack: Attack | None = None
    error = ""
    try:
        fd = steal_fd(pid, target)
        attack = Attack(fd, mode, started + duration)
        attack.run()
        os.close(fd)
    except Exception as exc:  # reported to the test
        error = repr(exc)
    finally:
        os.kill(pid, signal.SIGCONT)
    result = {
        "mode": mode,
        "seconds": round(time.monotonic() - started, 2),
        "bytes_sent": attack.sent if attack else 0,
        "handshakes": attack.handshakes if attack else 0,
        "error": error,
        "agent_pid": pid,
        "agent_state_after_sigstop": state,
    }
    with open(report, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
