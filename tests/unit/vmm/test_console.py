"""The capped, rotated console file and its reader, fed through real FIFOs by real processes.

A shell plays the VMM here, holding the FIFO as its stdout the way Firecracker does (QEMU opens it the
same way, read-write): what is under test is the host side. The real VMMs feed it in the integration
tests (tests/integration/test_disk_bounds.py, the QEMU and Firecracker boot tests).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest

from clawpot.vmm.console import CappedLog, ConsoleWriter, make_fifo, open_fifo

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


def test_fresh_starts_from_nothing(tmp_path: Path) -> None:
    (tmp_path / "console.log").write_bytes(b"an earlier VMM's console")
    (tmp_path / "console.log.1").write_bytes(b"and its predecessor")
    log = CappedLog(tmp_path / "console.log", fresh=True)
    log.write(b"new")
    log.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["console.log"]
    assert (tmp_path / "console.log").read_bytes() == b"new"


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
    async with asyncio.timeout(20):
        while not predicate():  # noqa: ASYNC110 - the predicate reads state the loop updates
            await asyncio.sleep(0.005)


def _printer(fifo: Path, script: str) -> subprocess.Popen[bytes]:
    """A VMM stand-in: a shell whose stdout is the console FIFO, opened read-write and blocking."""
    make_fifo(fifo)
    stdout = open_fifo(fifo, blocking=True)
    try:
        return subprocess.Popen(["sh", "-c", script], stdout=stdout)
    finally:
        os.close(stdout)


def _cpu_seconds() -> float:
    usage = os.times()
    return usage.user + usage.system


async def test_flood_is_capped_with_bounded_memory_and_few_wakeups(tmp_path: Path) -> None:
    log = CappedLog(tmp_path / "console.log", cap=CAP)
    writer = ConsoleWriter.from_fifo(tmp_path / "console.fifo", log)
    total = 16 * 1024 * 1024
    max_size = 0
    tracemalloc.start()
    cpu = _cpu_seconds()
    try:
        # Small writes, as a UART delivers them (dd: 1 KiB blocks; a byte at a time would be too slow
        # for the shell, and the FIFO coalesces them the same way).
        proc = _printer(tmp_path / "console.fifo", f"head -c {total} /dev/zero | dd bs=1k status=none")
        while writer.bytes_read < total:
            await asyncio.sleep(0.001)
            max_size = max([max_size, *_sizes(log)])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    cpu = _cpu_seconds() - cpu
    assert await asyncio.to_thread(proc.wait, 10) == 0
    print(f"\n16 MiB through the console writer: peak traced memory {peak // 1024} KiB, file max {max_size}")
    assert max_size <= CAP
    assert all(s <= CAP for s in _sizes(log))
    assert peak < 1024 * 1024, f"the reader held {peak} bytes for a 16 MiB stream"
    writer.close()


async def test_trickle_is_read_in_batches(tmp_path: Path) -> None:
    """A guest printing a little at a time must not wake the reader for every write."""
    proc = _printer(
        tmp_path / "c.fifo", "i=0; while [ $i -lt 400 ]; do echo x; i=$((i+1)); sleep 0.001; done"
    )
    writer = ConsoleWriter.from_fifo(tmp_path / "c.fifo", CappedLog(tmp_path / "c.log"), interval=0.05)
    reads = 0
    original = writer._read_once

    def counting() -> bool:
        nonlocal reads
        reads += 1
        return original()

    writer._read_once = counting  # type: ignore[method-assign]
    await asyncio.to_thread(proc.wait, 30)
    await _until(lambda: writer.bytes_read == 800)
    writer.close()
    assert (tmp_path / "c.log").read_bytes() == b"x\n" * 400
    assert reads < 100, f"{reads} reads for 400 small writes"


async def test_last_words_are_drained_at_exit(tmp_path: Path) -> None:
    fifo = tmp_path / "serial.fifo"
    # A reader that reads once, then not for a long while: the rest is still in the FIFO at the exit.
    writer = ConsoleWriter.from_fifo(fifo, CappedLog(tmp_path / "serial.log", cap=CAP), interval=60)
    proc = _printer(fifo, "head -c 30000 /dev/zero | tr '\\0' x; sleep 0.3; echo; echo last words")
    await asyncio.to_thread(proc.wait, 30)
    await asyncio.sleep(0.1)
    assert writer.bytes_read < 30000 + 1 + len("last words\n")  # not all of it yet
    writer.drain()
    writer.close()
    assert writer.bytes_read == 30000 + 1 + len("last words\n")
    assert (tmp_path / "serial.log").read_bytes().endswith(b"\nlast words\n")


async def test_reader_restart_loses_nothing_and_never_breaks_the_writer(tmp_path: Path) -> None:
    """The server dies (its reader goes) and a new one adopts the VMM: the VMM never sees EPIPE, waits
    once the FIFO is full, and goes on when the next reader opens the FIFO by its path."""
    fifo = tmp_path / "serial.fifo"
    proc = _printer(fifo, "i=0; while :; do echo line $i; i=$((i+1)); done")
    try:
        log = CappedLog(tmp_path / "serial.log", cap=CAP)
        writer = ConsoleWriter.from_fifo(fifo, log)
        await _until(lambda: writer.bytes_read > 10000)
        writer.close()  # the server is gone
        await asyncio.sleep(0.5)
        assert proc.poll() is None, "the printer died: EPIPE/SIGPIPE without a reader"
        again = ConsoleWriter.from_fifo(fifo, CappedLog(tmp_path / "serial.log", cap=CAP))
        await _until(lambda: again.bytes_read > 4 * CAP)  # it runs again, far past what the FIFO holds
        again.close()
        assert all(s <= CAP for s in _sizes(log))
        lines = _kept(log).splitlines()
        numbers = [int(line.split()[1]) for line in lines[1:-1]]
        assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))  # nothing lost in between
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def test_fifo_refuses_to_replace_another_file(tmp_path: Path) -> None:
    (tmp_path / "console.fifo").write_text("not a fifo")
    with pytest.raises(OSError, match="not a FIFO"):
        make_fifo(tmp_path / "console.fifo")
    (tmp_path / "link").symlink_to(tmp_path / "console.fifo")
    with pytest.raises(OSError):
        open_fifo(tmp_path / "link", blocking=False)
