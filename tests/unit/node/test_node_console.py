"""Reading a VM's console (clawpot.node.console): the tail across the rotated predecessor, following
across rotations written by the real ``CappedLog``, the bounds, and what a dead VM keeps."""

from __future__ import annotations

import asyncio
from pathlib import Path

from clawpot import limits
from clawpot.node import console
from clawpot.vmm.console import CappedLog


async def _all(path: Path, **kwargs: object) -> bytes:
    return b"".join([chunk async for chunk in console.read(path, **kwargs)])  # type: ignore[arg-type]


async def test_everything_kept_then_the_last_lines_across_the_predecessor(tmp_path: Path) -> None:
    path = tmp_path / "console.log"
    log = CappedLog(path, cap=30, keep=1)
    lines = [f"line {n}\n".encode() for n in range(8)]  # 7 bytes each: 4 per file before rotating
    for line in lines:
        log.write(line)
    log.close()
    kept = (tmp_path / "console.log.1").read_bytes() + path.read_bytes()
    assert await _all(path) == kept
    assert await _all(path, tail_lines=2) == b"".join(lines[-2:])
    # The tail reaches into the predecessor, oldest first.
    assert await _all(path, tail_lines=6) == kept[-6 * 7 :]
    assert await _all(path, tail_lines=0) == b""
    assert await _all(path, tail_lines=1000) == kept


async def test_an_unfinished_last_line_counts_as_a_line(tmp_path: Path) -> None:
    path = tmp_path / "console.log"
    path.write_bytes(b"a\nb\nc")
    assert await _all(path, tail_lines=1) == b"c"
    assert await _all(path, tail_lines=2) == b"b\nc"


async def test_no_console_yet_is_empty(tmp_path: Path) -> None:
    assert await _all(tmp_path / "console.log", tail_lines=5) == b""


async def test_chunks_are_bounded_and_the_tail_is_capped(tmp_path: Path) -> None:
    path = tmp_path / "console.log"
    path.write_bytes(b"x\n" * 100_000)
    chunks = [c async for c in console.read(path, chunk=1000)]
    assert max(map(len, chunks)) == 1000 and sum(map(len, chunks)) == 200_000
    assert await _all(path, tail_lines=10**9) == b"x\n" * limits.LOGS_TAIL_MAX_LINES


async def test_follow_reads_across_rotations_until_the_vm_can_print_no_more(tmp_path: Path) -> None:
    path = tmp_path / "console.log"
    log = CappedLog(path, cap=100, keep=1)
    log.write(b"before\n")
    alive = True
    got: list[bytes] = []

    async def follow() -> None:
        async for chunk in console.read(path, follow=True, more_may_come=lambda: alive, interval=0.01):
            got.append(chunk)

    task = asyncio.create_task(follow())
    expected = b"before\n"
    for n in range(40):  # 40 x 12 bytes = 480: four rotations at a 100-byte cap
        line = f"line {n:05d}\n".encode()
        log.write(line)
        expected += line
        await asyncio.sleep(0.005 if n % 5 else 0.03)
    alive = False  # the VM died: the reader sends what is left and ends
    await asyncio.wait_for(task, 5)
    assert b"".join(got) == expected


async def test_follow_ends_when_stop_is_set(tmp_path: Path) -> None:
    path = tmp_path / "console.log"
    path.write_bytes(b"x\n")
    stop = asyncio.Event()
    stream = console.read(path, follow=True, more_may_come=lambda: True, stop=stop, interval=10)
    assert await anext(stream) == b"x\n"
    stop.set()
    assert [c async for c in stream] == []


def test_keep_only_console_leaves_the_console_and_nothing_else(tmp_path: Path) -> None:
    vm_dir = tmp_path / "vms" / "abc"
    vm_dir.mkdir(parents=True)
    for name in ("console.log", "console.log.1", "scratch.ext4", "qmp.sock", "metadata.json"):
        (vm_dir / name).write_bytes(name.encode())
    (vm_dir / "sub").mkdir()
    path = vm_dir / "console.log"
    console.set_aside(path)
    # What the VM's own cleanup does after the console was set aside: the whole directory goes.
    for entry in (*vm_dir.iterdir(),):
        if entry.is_dir():
            entry.rmdir()
        else:
            entry.unlink()
    vm_dir.rmdir()
    console.keep_only_console(path)
    assert sorted(p.name for p in vm_dir.iterdir()) == ["console.log", "console.log.1"]
    assert path.read_bytes() == b"console.log"
    assert sorted(p.name for p in vm_dir.parent.iterdir()) == ["abc"]  # nothing left aside


def test_keep_only_console_in_place_and_without_a_console(tmp_path: Path) -> None:
    vm_dir = tmp_path / "abc"
    vm_dir.mkdir()
    (vm_dir / "serial.log").write_bytes(b"s")
    (vm_dir / "scratch.ext4").write_bytes(b"d")
    console.keep_only_console(vm_dir / "serial.log")  # a VM found dead at start: files still there
    assert [p.name for p in vm_dir.iterdir()] == ["serial.log"]
    other = tmp_path / "def"
    other.mkdir()
    (other / "scratch.ext4").write_bytes(b"d")
    console.keep_only_console(other / "console.log")
    assert not other.exists()
