"""LogFollower on real files: it sees a line written after it started following, even split across
writes, and keeps waiting while the line is not there."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from clawpot.vmm.firecracker.logwatch import LogFollower

NEEDLE = b"Successfully started microvm that was configured from one single json"


async def write_later(path: Path, *pieces: bytes, gap: float = 0.02) -> None:
    with open(path, "ab", buffering=0) as f:  # noqa: ASYNC230 - a test writer, tiny writes
        for piece in pieces:
            await asyncio.sleep(gap)
            f.write(piece)


async def test_sees_a_line_split_across_writes(tmp_path: Path) -> None:
    log = tmp_path / "fc.log"
    log.write_bytes(b"what was there before is read too\n")
    async with LogFollower(log) as follower:
        writer = asyncio.create_task(
            write_later(log, b"[vm:main:INFO] Running\n", NEEDLE[:20], NEEDLE[20:] + b"\n")
        )
        async with asyncio.timeout(30):
            await follower.wait_for(NEEDLE)
        await writer


async def test_waits_while_the_line_is_missing(tmp_path: Path) -> None:
    log = tmp_path / "fc.log"
    log.touch()
    async with LogFollower(log) as follower:
        waiter = asyncio.create_task(follower.wait_for(NEEDLE))
        await write_later(log, b"[vm:main:INFO] Running\n", NEEDLE[:-1] + b"X\n", gap=0.05)
        await asyncio.sleep(0.1)
        assert not waiter.done()  # lines that are not the one, or only almost: it keeps waiting
        log.write_bytes(log.read_bytes() + NEEDLE + b"\n")
        async with asyncio.timeout(30):
            await waiter


async def test_a_missing_file_fails_at_once(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        async with LogFollower(tmp_path / "missing.log"):
            pass
