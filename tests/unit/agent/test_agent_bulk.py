"""100 MB through the agent in each direction while the host holds back: flow control must keep the real
agent process's memory (its kernel-reported peak RSS) under 64 MB."""

from __future__ import annotations

import asyncio
import hashlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from agent_harness import AgentProcess

from clawpot.agent_client import AgentClient, Exited, Output

SIZE = 100 * 1024 * 1024
RSS_LIMIT = 64 * 1024 * 1024
# 1 MiB that differs from block to block, so misordered or dropped chunks change the digest.
_BLOCK = bytes(range(256)) * 4096
_GENERATOR = (
    "import sys\n"
    "block = bytes(range(256)) * 4096\n"
    "for i in range(100):\n"
    "    sys.stdout.buffer.write(i.to_bytes(4, 'big') + block[4:])\n"
)


def _expected_digest() -> str:
    h = hashlib.sha256()
    for i in range(100):
        h.update(i.to_bytes(4, "big") + _BLOCK[4:])
    return h.hexdigest()


async def _blocks() -> AsyncIterator[bytes]:
    for i in range(100):
        yield i.to_bytes(4, "big") + _BLOCK[4:]


def _assert_rss(agent: AgentProcess) -> None:
    peak = agent.peak_rss_bytes()
    print(f"agent peak RSS {peak / 2**20:.1f} MiB")
    assert peak < RSS_LIMIT, f"agent peak RSS {peak / 2**20:.1f} MiB"


async def test_100mb_stdout_with_a_stalled_reader(client: AgentClient, agent: AgentProcess) -> None:
    proc = await client.exec([sys.executable, "-c", _GENERATOR], stdin=False)
    digest = hashlib.sha256()
    received = 0
    async with proc:
        async for event in proc:
            if isinstance(event, Output):
                if received == 0:
                    # Stop reading for a while: without backpressure the generator would now push all
                    # 100 MB into the agent.
                    await asyncio.sleep(1.0)
                digest.update(event.data)
                received += len(event.data)
            else:
                assert isinstance(event, Exited)
                assert event.status.exit_code == 0
    assert received == SIZE
    assert digest.hexdigest() == _expected_digest()
    _assert_rss(agent)


async def test_100mb_upload(client: AgentClient, agent: AgentProcess, tmp_path: Path) -> None:
    target = tmp_path / "sub" / "upload.bin"
    written = await client.put_file(_blocks(), str(target), mode=0o640, mkdirs=True)
    assert written == SIZE
    assert target.stat().st_size == SIZE
    assert target.stat().st_mode & 0o7777 == 0o640
    assert await asyncio.to_thread(_file_digest, target) == _expected_digest()
    assert [p.name for p in target.parent.iterdir()] == ["upload.bin"], "temporary file left behind"
    _assert_rss(agent)


async def test_100mb_download_with_a_stalled_reader(
    client: AgentClient, agent: AgentProcess, tmp_path: Path
) -> None:
    source = tmp_path / "source.bin"
    await asyncio.to_thread(_write_blocks, source)
    digest = hashlib.sha256()
    async with await client.open_file(str(source)) as download:
        assert download.info.size == SIZE
        async for chunk in download:
            if download.received == len(chunk):
                await asyncio.sleep(1.0)  # the agent must stop reading the file, not buffer it
            digest.update(chunk)
    assert download.received == SIZE
    assert digest.hexdigest() == _expected_digest()

    copy = tmp_path / "copy.bin"
    info = await client.get_file(str(source), copy)
    assert info.size == SIZE
    assert await asyncio.to_thread(_file_digest, copy) == _expected_digest()
    _assert_rss(agent)


def _write_blocks(path: Path) -> None:
    with open(path, "wb") as f:
        for i in range(100):
            f.write(i.to_bytes(4, "big") + _BLOCK[4:])


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
