"""Run the real agent (``python -m clawpot.agent``) as a child process, and look at processes in /proc."""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from clawpot.agent.protocol import (
    READY_LINE,
    Frame,
    FrameDecoder,
    FrameType,
    decode_json,
    encode_frame,
    hello_line,
)
from clawpot.agent_client import UnixSocketEndpoint


@dataclass
class AgentProcess:
    proc: subprocess.Popen[bytes]
    socket: Path
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def endpoint(self) -> UnixSocketEndpoint:
        return UnixSocketEndpoint(self.socket)

    def peak_rss_bytes(self) -> int:
        """High-water mark of the agent's resident memory (VmHWM), from the kernel."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmHWM in /proc status")

    def children(self) -> list[tuple[int, str]]:
        """(pid, state) of the agent's direct children."""
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    stat = (entry / "stat").read_text()
                    fields = stat[stat.rindex(")") + 2 :].split()
                    if int(fields[1]) == self.pid:
                        found.append((int(entry.name), fields[0]))
        return found

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def start_agent(
    workdir: Path,
    *args: str,
    python_args: tuple[str, ...] = (),
    module: str = "clawpot.agent",
    cwd: Path | None = None,
    pass_fds: tuple[int, ...] = (),
    listen: bool = True,
    wrapper: tuple[str, ...] = (),
) -> AgentProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    sock = workdir / "agent.sock"
    log = workdir / "agent.log"
    listen_args = ["--listen-unix", str(sock)] if listen else []
    with open(log, "ab") as log_file:
        proc = subprocess.Popen(
            [*wrapper, sys.executable, *python_args, "-m", module, *listen_args, *args],
            stdout=subprocess.PIPE,
            stderr=log_file,
            cwd=cwd,
            pass_fds=pass_fds,
        )
    agent = AgentProcess(proc, sock, log)
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout=30):
            stop_agent(agent)
            raise AssertionError(f"agent printed nothing within 30 s; log:\n{agent.log_text()}")
    line = proc.stdout.readline().decode()
    if not line.startswith(READY_LINE + " "):
        stop_agent(agent)
        raise AssertionError(f"unexpected first line {line!r}; log:\n{agent.log_text()}")
    return agent


def stop_agent(agent: AgentProcess) -> int:
    if agent.proc.poll() is None:
        agent.proc.send_signal(signal.SIGTERM)
        try:
            agent.proc.wait(10)
        except subprocess.TimeoutExpired:
            agent.proc.kill()
            agent.proc.wait()
    if agent.proc.stdout is not None:
        agent.proc.stdout.close()
    return agent.proc.returncode


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def wait_until(predicate: object, timeout: float = 10.0) -> bool:
    assert callable(predicate)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


def kill_quietly(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


class RawConnection:
    """Speak the wire protocol byte by byte (blocking socket), to feed the agent malformed input."""

    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.decoder = FrameDecoder()
        self._pending = b""

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, ftype: int, stream: int = 0, payload: bytes = b"", flags: int = 0) -> None:
        self.sock.sendall(encode_frame(ftype, stream, payload, flags))

    def read_line(self) -> bytes:
        while b"\n" not in self._pending:
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            self._pending += chunk
        line, _, self._pending = self._pending.partition(b"\n")
        return line

    def handshake(self) -> bytes:
        self.send_raw(hello_line("rawtest01"))
        line = self.read_line()
        assert line.startswith(b"CLAWPOT-WELCOME rawtest01 1 "), line
        self.decoder.feed(self._pending)
        self._pending = b""
        return line

    def frame(self) -> Frame:
        while (frame := self.decoder.next()) is None:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("agent closed the connection")
            self.decoder.feed(chunk)
        return frame

    def frame_of(self, *types: int, stream: int | None = None) -> Frame:
        """Next frame of one of ``types`` (optionally on ``stream``), skipping others."""
        while True:
            frame = self.frame()
            if frame.type in types and (stream is None or frame.stream == stream):
                return frame

    def error(self, stream: int | None = None) -> dict[str, object]:
        return decode_json(self.frame_of(FrameType.ERROR, stream=stream).payload)

    def at_eof(self) -> bool:
        """True when the agent closes the connection (after any frames still in flight)."""
        try:
            while self.sock.recv(65536):
                pass
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True
        return True

    def ping_ok(self) -> bool:
        self.send(FrameType.PING, 0, b"alive?")
        return self.frame_of(FrameType.PONG).payload == b"alive?"
