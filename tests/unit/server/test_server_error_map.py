"""One mapping from failures to statuses: expected failures never become INTERNAL or UNKNOWN.

The Exec case runs the real servicer in a real gRPC server over a real unix socket; the manager
behind it is a stand-in (at the seam the servicer calls), so the agent can be lost after the first
output deterministically. The integration suite does the same with a real VM.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from clawpot import errors, limits
from clawpot.agent_client.errors import AgentDisconnected, AgentUnreachable, ProtocolError, RemoteError
from clawpot.node.sessions import OutputChunk
from clawpot.server.servicer import VmServicer
from clawpot.v1 import vm_pb2, vm_pb2_grpc


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (AgentDisconnected("connection lost"), errors.Unavailable),
        (AgentUnreachable("serial:/x", 3, "no reply", 2), errors.Unavailable),
        (ProtocolError("bad frame"), errors.Unavailable),
        (RemoteError("session_ended", "stream ended"), errors.FailedPrecondition),
        (errors.NotFound("x"), errors.NotFound),
    ],
)
def test_translate(exc: Exception, kind: type[errors.ServerError]) -> None:
    assert isinstance(errors.translate(exc), kind)


def test_a_bug_is_not_translated() -> None:
    assert errors.translate(ValueError("frame payload too big")) is None


def test_quote_and_one_line_bound_what_a_status_carries() -> None:
    assert errors.quote("short") == "'short'"
    assert errors.quote("\x1b[2J" + "a" * 100) == "'\\x1b[2J" + "a" * 28 + "'... (104 chars)"
    line = errors.one_line("é" * 10_000 + "\nsecond line")
    assert len(line) == limits.MAX_STATUS_MESSAGE_CHARS and line.endswith("...")
    # Worst case once percent-encoded in the grpc-message trailer (4-byte UTF-8 -> 12 bytes): < 8 KiB.
    assert limits.MAX_STATUS_MESSAGE_CHARS * 12 < 8 * 1024


class _LostMidStream:
    """An exec session whose agent connection breaks after the first chunk of output."""

    async def events(self) -> AsyncIterator[OutputChunk]:
        yield OutputChunk(stdout=b"first\n")
        raise errors.Unavailable("lost the guest agent during exec: connection lost")

    async def result(self) -> Any:
        raise AssertionError("not reached")

    async def close(self) -> None:
        pass


class _Manager:
    async def exec(self, vm_id: str, params: object) -> _LostMidStream:
        return _LostMidStream()


async def test_exec_losing_the_agent_mid_stream_is_unavailable(tmp_path: Path) -> None:
    server = grpc.aio.server()
    vm_pb2_grpc.add_VmServiceServicer_to_server(VmServicer(_Manager()), server)  # type: ignore[arg-type]
    address = f"unix:{tmp_path / 'api.sock'}"
    server.add_insecure_port(address)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            call = vm_pb2_grpc.VmServiceStub(channel).Exec(
                iter([vm_pb2.ExecRequest(start=vm_pb2.ExecStart(vm_id="abc", argv=["true"]))])
            )
            got = []
            with pytest.raises(grpc.aio.AioRpcError) as info:
                async for response in call:
                    got.append(response.stdout)
        assert got == [b"first\n"]
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value
        assert "lost the guest agent" in (info.value.details() or "")
    finally:
        await server.stop(None)
        await asyncio.sleep(0)
