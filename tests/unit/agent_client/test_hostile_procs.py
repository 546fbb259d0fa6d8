"""A hostile agent against the host's managed-process calls (agent_client.procs): lies about pids and
process lists are ProtocolErrors, an agent that never answers a unary call is cut off by its timeout."""

from __future__ import annotations

import json

import pytest
from guest_peer import Peer, hostile_agent

from clawpot import limits
from clawpot.agent.protocol import FrameType
from clawpot.agent_client import ProtocolError
from clawpot.agent_client.procs import ProcSpec, Selector


@pytest.mark.parametrize(
    "info",
    [b'{"pid": 0}', b'{"pid": -5}', b'{"pid": "12"}', b'{"pid": 99999999999}', b"[1]", b"not json"],
)
async def test_lying_start_info_is_a_protocol_error(info: bytes) -> None:
    def scenario(peer: Peer) -> None:
        peer.send(FrameType.INFO, 1, info)

    async with hostile_agent(scenario) as h:
        with pytest.raises(ProtocolError, match="malformed"):
            await h.client.proc_start(ProcSpec(["true"]))


def _listing(processes: object) -> bytes:
    return json.dumps({"processes": processes}).encode()


@pytest.mark.parametrize(
    "end",
    [
        _listing("nope"),
        _listing([{"pid": 0, "argv": []}]),
        _listing([{"pid": 3, "argv": "sh"}]),
        _listing([{"pid": 3, "argv": ["sh"], "env": {"A": 1}}]),
        _listing([{"pid": 3, "argv": ["sh"], "tag": 7}]),
        _listing([{"pid": 3, "argv": ["sh"]}] * (limits.AGENT_PROC_LIST_MAX + 1)),
    ],
)
async def test_lying_process_list_is_a_protocol_error(end: bytes) -> None:
    def scenario(peer: Peer) -> None:
        peer.send(FrameType.END, 1, end)

    async with hostile_agent(scenario) as h:
        with pytest.raises(ProtocolError, match="malformed"):
            await h.client.proc_list()


async def test_silent_agent_times_out_a_signal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "AGENT_PROC_CALL_TIMEOUT", 0.3)

    def scenario(peer: Peer) -> None:
        pass  # never answers

    async with hostile_agent(scenario) as h:
        with pytest.raises(TimeoutError):
            await h.client.proc_signal(Selector(pid=5), 9)
