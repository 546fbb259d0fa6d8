"""The filesystem operations' bounds against a hostile agent (a thread on the guest end of a real socket
pair): a listing past the caller's limit, an endless line, lying entries, a watch that never confirms."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from guest_peer import Peer, hostile_agent

from clawpot import limits
from clawpot.agent.protocol import FrameType, Pipe, encode_json
from clawpot.agent_client import ProtocolError

ENTRY = {
    "name": "f",
    "path": "/f",
    "mode": 0o100644,
    "size": 1,
    "uid": 0,
    "gid": 0,
    "owner": "root",
    "group": "root",
    "mtime_ns": 1,
    "target": None,
    "target_mode": None,
}


def idle(peer: Peer) -> None:
    peer._stop.wait(30)


def lines(count: int) -> bytes:
    return b"".join(json.dumps(ENTRY).encode() + b"\n" for _ in range(count))


async def test_listing_stops_at_the_callers_limit() -> None:
    async with hostile_agent(idle) as h:
        listing = asyncio.create_task(h.client.list_dir("/", limit=10))
        await asyncio.sleep(0.1)
        await h.send(FrameType.DATA, 1, lines(300), Pipe.STDOUT)  # the agent ignores the limit
        result = await asyncio.wait_for(listing, 10)
        assert len(result.entries) == 10 and result.truncated
        assert h.client.connected


async def test_an_endless_line_is_a_protocol_error() -> None:
    async with hostile_agent(idle) as h:
        listing = asyncio.create_task(h.client.list_dir("/"))
        await asyncio.sleep(0.1)
        for _ in range(limits.AGENT_FS_LINE_MAX // 60_000 + 2):
            await h.send(FrameType.DATA, 1, b"x" * 60_000, Pipe.STDOUT)
        with pytest.raises(ProtocolError, match="line of more than"):
            await asyncio.wait_for(listing, 10)


@pytest.mark.parametrize(
    "lie",
    [{"size": -5}, {"name": 7}, {"mode": "0644"}, {"owner": "x" * 5000}],
)
async def test_lying_entries_are_protocol_errors(lie: dict[str, object]) -> None:
    async with hostile_agent(idle) as h:
        stat = asyncio.create_task(h.client.stat("/f"))
        await asyncio.sleep(0.1)
        await h.send(FrameType.END, 1, encode_json({"entry": {**ENTRY, **lie}}))
        with pytest.raises(ProtocolError):
            await asyncio.wait_for(stat, 10)


async def test_a_watch_that_never_confirms_returns_what_came() -> None:
    async with hostile_agent(idle) as h:
        opening = asyncio.create_task(h.client.watch("/w"))
        await asyncio.sleep(0.1)
        await h.send(FrameType.INFO, 1, encode_json({"watches": 1}))
        watch = await asyncio.wait_for(opening, 10)
        event = encode_json({"name": "a", "type": "create"}) + b"\n"
        await h.send(FrameType.DATA, 1, event * 3, Pipe.STDOUT)
        started = time.monotonic()
        events = await watch.sync(timeout=1.0)  # no {"synced": N} ever comes
        assert time.monotonic() - started < 5
        assert [(e.type, e.name) for e in events] == [("create", "a")] * 3
        await h.send(FrameType.DATA, 1, event * 5, Pipe.STDOUT)
        await asyncio.sleep(0.2)
        assert len(await watch.sync(max_events=2, timeout=0.5)) == 2  # the rest waits for the next call
        assert len(await watch.sync(timeout=0.5)) == 3
        watch.close()
