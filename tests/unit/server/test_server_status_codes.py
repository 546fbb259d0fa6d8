"""Status codes over real gRPC, on a real unix socket, with the node on the fake VMM (no root, no VM):
what a client sees for bad input, a missing VM, a VM that is not Running and a boot that failed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from support import fake_vmm
from support.fake_vmm import FakeVmmBackend

from clawpot.node.node import Node
from clawpot.server.servicer import VmServicer
from clawpot.service.service import Service
from clawpot.v1 import vm_pb2, vm_pb2_grpc


@pytest.fixture
async def stub(node: Node, data_dir: Path) -> AsyncIterator[vm_pb2_grpc.VmServiceStub]:
    server = grpc.aio.server()
    vm_pb2_grpc.add_VmServiceServicer_to_server(VmServicer(Service(node)), server)
    address = f"unix:{data_dir}/api.sock"
    assert server.add_insecure_port(address) != 0
    await server.start()
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            yield vm_pb2_grpc.VmServiceStub(channel)
    finally:
        await server.stop(None)


async def _code(call: object) -> grpc.StatusCode:
    assert asyncio.iscoroutine(call) or hasattr(call, "__await__")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value.code()


async def test_bad_input_is_invalid_argument_and_leaves_nothing(
    stub: vm_pb2_grpc.VmServiceStub, node: Node
) -> None:
    assert await _code(stub.CreateVm(vm_pb2.CreateVmRequest(vcpus=1000))) is grpc.StatusCode.INVALID_ARGUMENT
    assert (
        await _code(stub.CreateVm(vm_pb2.CreateVmRequest(memory_mib=1))) is grpc.StatusCode.INVALID_ARGUMENT
    )
    bad_label = vm_pb2.CreateVmRequest(labels={"no spaces": "x"})
    assert await _code(stub.CreateVm(bad_label)) is grpc.StatusCode.INVALID_ARGUMENT
    assert await _code(stub.GetVm(vm_pb2.GetVmRequest(id="../etc"))) is grpc.StatusCode.INVALID_ARGUMENT
    assert node.store.list() == []


async def test_missing_vm_is_not_found(stub: vm_pb2_grpc.VmServiceStub) -> None:
    assert await _code(stub.GetVm(vm_pb2.GetVmRequest(id="nope"))) is grpc.StatusCode.NOT_FOUND
    assert await _code(stub.DeleteVm(vm_pb2.DeleteVmRequest(id="nope"))) is grpc.StatusCode.NOT_FOUND


async def test_failed_boot_is_unavailable(stub: vm_pb2_grpc.VmServiceStub, node: Node) -> None:
    request = vm_pb2.CreateVmRequest(labels={fake_vmm.LABEL: "exit"})
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateVm(request)
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "failed to start" in (caught.value.details() or "")
    assert node.store.list() == []


async def test_a_crashed_vm_is_error_and_refuses_exec(
    stub: vm_pb2_grpc.VmServiceStub, backend: FakeVmmBackend
) -> None:
    vm = await stub.CreateVm(vm_pb2.CreateVmRequest())
    assert vm.state == vm_pb2.VM_STATE_RUNNING
    fake_vmm.crash(backend.started[0].pid or 0)
    for _ in range(500):
        vm = await stub.GetVm(vm_pb2.GetVmRequest(id=vm.id))
        if vm.state == vm_pb2.VM_STATE_ERROR:
            break
        await asyncio.sleep(0.02)
    assert vm.state == vm_pb2.VM_STATE_ERROR
    assert "SIGKILL" in vm.error
    start = vm_pb2.ExecRequest(start=vm_pb2.ExecStart(vm_id=vm.id, argv=["true"]))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in stub.Exec(iter([start])):
            pass
    assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    await stub.DeleteVm(vm_pb2.DeleteVmRequest(id=vm.id))
    listed = await stub.ListVms(vm_pb2.ListVmsRequest())
    assert list(listed.vms) == []
