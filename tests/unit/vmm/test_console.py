"""The capped, rotated console file and its reader, fed through real sockets, pipes and processes.

A stand-in process plays the VMM here (a unix-socket client for QEMU, a shell writing to its stdout pipe
for Firecracker): what is under test is the host side. The real VMMs feed it in the integration tests
(tests/integration/test_disk_bounds.py, the Firecracker boot tests).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import threading
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest

from clawpot.vmm.console import CappedLog, ConsoleWriter, vmm_stdout_pipe

CAP = 64 * 1024


def _sizes(log: CappedLog) -> list[int]:
    return [p.stat().st_size for p in (log.path, *log.rotated) if p.exists()]


def _kept(log: CappedLog) -> bytes:
    """Everything still on disk, oldest first."""
    return b"".join(p.read_bytes() for p in (*reversed(log.rotated), log.path) if p.exists())


def test_rotation_never_exceeds_the_cap_and_keeps_a_suffix(tmp_path: Path) -> None:
    log = CappedLog(tmp_path / "console.log", cap=CAP)
    written = bytearray()
    for n, size in enumerate([1, 100, CAP - 101, 1, CAP * 3 + 7, 5000, CAP, 13] * 3):
        data = bytes([n % 251]) * size
        log.write(data)
        written += data
        assert all(s <= CAP for s in _sizes(log)), _sizes(log)
        assert not (tmp_path / "console.log.2").exists()  # one predecessor only
    kept = _kept(log)
    assert CAP < len(kept) <= 2 * CAP
    assert bytes(written).endswith(kept)  # the newest output survives, in order
    log.close()


def test_reopen_appends_and_an_oversized_file_rotates_at_once(tmp_path: Path) -> None:
    path = tmp_path / "console.log"
    path.write_bytes(b"x" * (CAP + 10))  # e.g. left by a Clawpot without the cap
    log = CappedLog(path, cap=CAP)
    log.write(b"new")
    assert path.read_bytes() == b"new"
    assert (tmp_path / "console.log.1").stat().st_size == CAP + 10
    log.close()
    again = CappedLog(path, cap=CAP)  # an adopting server continues the file
    again.write(b"-more")
    assert path.read_bytes() == b"new-more"
    again.remove()
    assert list(tmp_path.iterdir()) == []


def test_keep_zero_truncates(tmp_path: Path) -> None:
    log = CappedLog(tmp_path / "c.log", cap=10, keep=0)
    log.write(b"0123456789abc")
    assert log.path.read_bytes() == b"abc"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.log"]
    log.close()


def test_never_writes_through_a_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    (tmp_path / "console.log").symlink_to(victim)
    with pytest.raises(OSError):
        CappedLog(tmp_path / "console.log")
    assert victim.read_bytes() == b"keep"


async def _until(predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while not predicate():  # noqa: ASYNC110 - the predicate reads state the loop updates
            await asyncio.sleep(0.005)


def _flood(path: Path, total: int, block: bytes, stop: threading.Event | None = None) -> threading.Thread:
    """A QEMU stand-in: connects to the console socket and writes ``total`` bytes as fast as it can."""

    def run() -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(path))
            sent = 0
            while sent < total and not (stop and stop.is_set()):
                sock.sendall(block)
                sent += len(block)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


async def test_listener_caps_a_flood_with_bounded_memory(tmp_path: Path) -> None:
    log = CappedLog(tmp_path / "console.log", cap=CAP)
    writer = ConsoleWriter.listen(tmp_path / "console.sock", log, chunk=16 * 1024)
    total = 16 * 1024 * 1024
    block = os.urandom(64 * 1024)  # allocated before tracing: the sender allocates nothing more
    max_size = 0
    tracemalloc.start()
    try:
        sender = _flood(tmp_path / "console.sock", total, block)
        while writer.bytes_read < total:
            await asyncio.sleep(0.001)
            max_size = max([max_size, *_sizes(log)])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    sender.join(10)
    print(f"\n16 MiB through the console writer: peak traced memory {peak // 1024} KiB, file max {max_size}")
    assert writer.bytes_read == total
    assert max_size <= CAP
    assert all(s <= CAP for s in _sizes(log))
    assert peak < 1024 * 1024, f"the reader held {peak} bytes for a 16 MiB stream"
    writer.close()
    assert not (tmp_path / "console.sock").exists()


async def test_listener_survives_reconnects_and_a_restarted_reader(tmp_path: Path) -> None:
    sock_path = tmp_path / "console.sock"
    writer = ConsoleWriter.listen(sock_path, CappedLog(tmp_path / "console.log", cap=CAP))
    first = _flood(sock_path, 1000, b"a" * 100)
    await _until(lambda: writer.bytes_read == 1000)
    first.join(5)
    await _until(lambda: not writer.connected)  # the client hung up: EOF, wait for the next one
    second = _flood(sock_path, 500, b"b" * 100)  # QEMU reconnecting
    await _until(lambda: writer.bytes_read == 1500)
    second.join(5)
    # The server goes away, leaving its socket file; the next one listens on the same path.
    writer.close(unlink_socket=False)
    assert sock_path.exists()
    again = ConsoleWriter.listen(sock_path, CappedLog(tmp_path / "console.log", cap=CAP))
    third = _flood(sock_path, 300, b"c" * 100)
    await _until(lambda: again.bytes_read == 300)
    third.join(5)
    again.close()
    assert (tmp_path / "console.log").read_bytes() == b"a" * 1000 + b"b" * 500 + b"c" * 300


async def test_listener_refuses_to_replace_a_file(tmp_path: Path) -> None:
    (tmp_path / "console.sock").write_text("not a socket")
    with pytest.raises(OSError, match="not a socket"):
        ConsoleWriter.listen(tmp_path / "console.sock", CappedLog(tmp_path / "console.log"))


def _spawn_printer(script: str) -> tuple[subprocess.Popen[bytes], int]:
    """A Firecracker stand-in: a shell whose stdout is the console pipe, keeping a read end like
    firecracker does. Returns the process and the reader's end."""
    console_end, stdout_end, keeper = vmm_stdout_pipe()
    proc = subprocess.Popen(["sh", "-c", script], stdout=stdout_end, pass_fds=(keeper,))
    os.close(stdout_end)
    os.close(keeper)
    return proc, console_end


async def test_pipe_source_drains_last_words_at_exit(tmp_path: Path) -> None:
    proc, fd = _spawn_printer("head -c 300000 /dev/zero | tr '\\0' x; echo; echo last words")
    writer = ConsoleWriter.from_fd(fd, CappedLog(tmp_path / "serial.log", cap=CAP))
    await asyncio.to_thread(proc.wait, 30)
    writer.drain()
    writer.close()
    assert writer.bytes_read == 300000 + 1 + len("last words\n")
    assert (tmp_path / "serial.log").read_bytes().endswith(b"\nlast words\n")
    assert (tmp_path / "serial.log").stat().st_size <= CAP


async def test_pipe_reader_restart_through_proc(tmp_path: Path) -> None:
    """The server dies (its read end closes) and a new one adopts the VMM: the VMM never sees EPIPE
    (it keeps a read end), blocks once the pipe is full, and resumes when /proc/PID/fd/1 is reopened."""
    proc, fd = _spawn_printer("i=0; while :; do echo line $i; i=$((i+1)); done")
    try:
        log = CappedLog(tmp_path / "serial.log", cap=CAP)
        writer = ConsoleWriter.from_fd(fd, log)
        await _until(lambda: writer.bytes_read > 10000)
        writer.close()  # the server is gone
        await asyncio.sleep(0.5)
        assert proc.poll() is None, "the printer died: it got EPIPE/SIGPIPE without a reader"
        again = ConsoleWriter.from_process_stdout(proc.pid, CappedLog(tmp_path / "serial.log", cap=CAP))
        assert again is not None
        await _until(lambda: again.bytes_read > 4 * CAP)  # it runs again, past the pipe's 64 KiB
        again.close()
        assert all(s <= CAP for s in _sizes(log))
        lines = (tmp_path / "serial.log").read_bytes().splitlines()
        numbers = [int(line.split()[1]) for line in lines[1:-1]]
        assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))  # nothing lost in between
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


async def test_reattach_refuses_a_stdout_that_is_not_a_pipe(tmp_path: Path) -> None:
    with open(tmp_path / "out", "wb") as out:  # noqa: ASYNC230
        proc = subprocess.Popen(["sleep", "30"], stdout=out)  # noqa: ASYNC220
    try:
        assert ConsoleWriter.from_process_stdout(proc.pid, CappedLog(tmp_path / "serial.log")) is None
    finally:
        proc.kill()
        proc.wait()
