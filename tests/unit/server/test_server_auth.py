"""The token interceptor on a real gRPC server over real loopback TCP.

The VM service behind it is a stand-in that records whether a call reached it: this tests the gate,
for every streaming kind, not the VM API (tests/integration/test_api_auth.py runs the real server).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from clawpot.server.auth import TokenAuthInterceptor, check_metadata
from clawpot.v1 import vm_pb2, vm_pb2_grpc

TOKEN = "t" * 43


class Recorder(vm_pb2_grpc.VmServiceServicer):
    def __init__(self) -> None:
        self.reached: list[str] = []

    async def ListVms(self, request: Any, context: Any) -> vm_pb2.ListVmsResponse:
        self.reached.append("ListVms")
        return vm_pb2.ListVmsResponse()

    async def DownloadFile(self, request: Any, context: Any) -> AsyncIterator[vm_pb2.DownloadFileResponse]:
        self.reached.append("DownloadFile")
        yield vm_pb2.DownloadFileResponse(chunk=b"x")

    async def UploadFile(self, request_iterator: Any, context: Any) -> vm_pb2.UploadFileResponse:
        self.reached.append("UploadFile")
        async for _ in request_iterator:
            pass
        return vm_pb2.UploadFileResponse(size=1)

    async def Exec(self, request_iterator: Any, context: Any) -> AsyncIterator[vm_pb2.ExecResponse]:
        self.reached.append("Exec")
        async for _ in request_iterator:
            pass
        yield vm_pb2.ExecResponse(stdout=b"ok")


@pytest.fixture
async def served() -> AsyncIterator[tuple[str, Recorder]]:
    recorder = Recorder()
    server = grpc.aio.server(interceptors=[TokenAuthInterceptor(TOKEN)])
    vm_pb2_grpc.add_VmServiceServicer_to_server(recorder, server)
    health_servicer = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(("clawpot.v1.VmService", reflection.SERVICE_NAME), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}", recorder
    finally:
        await server.stop(0)


async def _calls(api: vm_pb2_grpc.VmServiceAsyncStub, metadata: Any) -> list[tuple[grpc.StatusCode, str]]:
    """Every streaming kind once; the status code and message of each."""

    async def upload() -> AsyncIterator[vm_pb2.UploadFileRequest]:
        yield vm_pb2.UploadFileRequest(chunk=b"data")

    async def exec_requests() -> AsyncIterator[vm_pb2.ExecRequest]:
        yield vm_pb2.ExecRequest(start=vm_pb2.ExecStart(vm_id="v", argv=["true"]))

    results = []
    for call in (
        lambda: api.ListVms(vm_pb2.ListVmsRequest(), metadata=metadata, timeout=10),
        lambda: _drain(
            api.DownloadFile(vm_pb2.DownloadFileRequest(vm_id="v"), metadata=metadata, timeout=10)
        ),
        lambda: api.UploadFile(upload(), metadata=metadata, timeout=10),
        lambda: _drain(api.Exec(exec_requests(), metadata=metadata, timeout=10)),
    ):
        try:
            await call()
            results.append((grpc.StatusCode.OK, ""))
        except grpc.aio.AioRpcError as exc:
            results.append((exc.code(), exc.details() or ""))
    return results


async def _drain(stream: Any) -> None:
    async for _ in stream:
        pass


@pytest.mark.parametrize(
    ("metadata", "says"),
    [
        ((), "missing API token"),
        ((("authorization", "Bearer " + "u" * 43),), "wrong API token"),
        ((("authorization", TOKEN),), "wrong API token"),  # the scheme is part of it
        ((("authorization", "Bearer " + TOKEN + "x"),), "wrong API token"),
        ((("authorization", "Bearer " + TOKEN), ("authorization", "Bearer x")), "more than one"),
    ],
)
async def test_calls_without_the_right_token_are_refused_before_the_service(
    served: tuple[str, Recorder], metadata: Any, says: str
) -> None:
    address, recorder = served
    async with grpc.aio.insecure_channel(address) as channel:
        results = await _calls(vm_pb2_grpc.VmServiceStub(channel), metadata)  # type: ignore[arg-type]
    for code, message in results:
        assert code is grpc.StatusCode.UNAUTHENTICATED and says in message, (code, message)
        assert "\n" not in message and "u" * 43 not in message and "Bearer x" not in message
    assert recorder.reached == []


async def test_calls_with_the_token_go_through(served: tuple[str, Recorder]) -> None:
    address, recorder = served
    async with grpc.aio.insecure_channel(address) as channel:
        api = vm_pb2_grpc.VmServiceStub(channel)
        results = await _calls(api, (("authorization", f"Bearer {TOKEN}"),))  # type: ignore[arg-type]
    assert results == [(grpc.StatusCode.OK, "")] * 4
    assert recorder.reached == ["ListVms", "DownloadFile", "UploadFile", "Exec"]


async def test_health_is_open_and_reflection_is_not(served: tuple[str, Recorder]) -> None:
    address, _ = served
    async with grpc.aio.insecure_channel(address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)

        async def ask() -> list[str]:
            names = []
            async for reply in stub.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                metadata=metadata,
                timeout=10,
            ):
                names += [s.name for s in reply.list_services_response.service]
            return names

        metadata: Any = ()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await ask()
        assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
        metadata = (("authorization", f"Bearer {TOKEN}"),)
        assert "clawpot.v1.VmService" in await ask()


async def test_unknown_methods_are_refused_the_same_way(served: tuple[str, Recorder]) -> None:
    address, _ = served
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.unary_unary("/clawpot.v1.Nope/Nothing")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(b"", timeout=10)
    assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED  # the API's shape is not revealed


def test_check_metadata_accepts_bytes_values() -> None:
    assert check_metadata([("authorization", f"Bearer {TOKEN}".encode())], TOKEN) is None
    assert check_metadata([("authorization", "Bearer \u00e9")], TOKEN) is not None
