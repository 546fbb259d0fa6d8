"""Pause and resume through the service and node, on the fake VMM (a real agent process stands in for
the hypervisor; pause is SIGSTOP of that process: see tests/support/fake_vmm.py). The real-VM proof is
tests/integration/test_pause_snapshot_api.py."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from support import fake_vmm
from support.fake_vmm import FakeVmmBackend, node_config

from clawpot import errors
from clawpot.node.health import AgentHealth
from clawpot.node.node import Node
from clawpot.node.sessions import ExecParams
from clawpot.service.service import CreateParams, Service
from clawpot.vm.state import VmState
from clawpot.vmm.base import Feature


def _process_state(pid: int) -> str:
    """The kernel's one-letter state of ``pid`` ("T" while stopped by SIGSTOP)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0]


async def _run(service: Service, vm_id: str, *argv: str) -> bytes:
    session = await service.exec(vm_id, ExecParams(argv=list(argv)))
    out = b""
    async for event in session.events():
        out += event.stdout or b""
    await session.result()
    await session.close()
    return out


async def _until(predicate: object, within: float = 10.0) -> None:
    assert callable(predicate)
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while not predicate():
        assert loop.time() < end, "condition not reached in time"
        await asyncio.sleep(0.02)


@pytest.fixture
def pausable(backend: FakeVmmBackend) -> FakeVmmBackend:
    backend.features = Feature.PAUSE
    return backend


async def test_pause_stops_the_vm_and_resume_runs_it_again(node: Node, pausable: FakeVmmBackend) -> None:
    service = Service(node)
    record = (await service.create(CreateParams())).record
    assert record.pid is not None

    paused = await service.pause(record.id)
    assert paused.record.state is VmState.PAUSED
    assert paused.health.health is AgentHealth.UNKNOWN
    assert node.store.get(record.id) == paused.record  # persisted
    assert _process_state(record.pid) == "T"
    # It keeps what it holds: same VMM, same directory, counted by admission.
    assert paused.record.pid == record.pid and record.vm_dir.exists()
    assert record.memory_mib in node.committed_memory()

    for call in (
        service.exec(record.id, ExecParams(argv=["true"])),
        service.download(record.id, "/etc/hostname"),
    ):
        with pytest.raises(errors.FailedPrecondition, match=f"^VM {record.id} is paused$"):
            await call
    with pytest.raises(errors.FailedPrecondition, match="it is Paused, not Running"):
        await service.pause(record.id)

    resumed = await service.resume(record.id)
    assert resumed.record.state is VmState.RUNNING
    assert node.store.get(record.id) == resumed.record
    assert _process_state(record.pid) != "T"
    assert await _run(service, record.id, "echo", "back") == b"back\n"
    with pytest.raises(errors.FailedPrecondition, match="it is Running, not Paused"):
        await service.resume(record.id)


async def test_a_paused_vm_is_deleted_at_once(node: Node, data_dir: Path, pausable: FakeVmmBackend) -> None:
    service = Service(node)
    record = (await service.create(CreateParams())).record
    await service.pause(record.id)
    await service.delete(record.id)
    assert node.store.list() == [] and node.vms == {}
    assert list((data_dir / "vms").iterdir()) == []


async def test_a_crash_while_paused_is_error(node: Node, pausable: FakeVmmBackend) -> None:
    service = Service(node)
    record = (await service.create(CreateParams())).record
    assert record.pid is not None
    await service.pause(record.id)
    fake_vmm.crash(record.pid)
    await _until(lambda: node.get(record.id).record.state is VmState.ERROR)
    with pytest.raises(errors.FailedPrecondition, match="it is Error, not Paused"):
        await service.resume(record.id)
    await service.delete(record.id)


async def test_a_paused_vm_survives_a_restart_still_paused(data_dir: Path, pausable: FakeVmmBackend) -> None:
    first = await Node.open(node_config(data_dir))
    record = (await Service(first).create(CreateParams())).record
    assert record.pid is not None
    await Service(first).pause(record.id)
    await first.close(stop_vms=False)

    second = await Node.open(node_config(data_dir))
    try:
        service = Service(second)
        adopted = second.get(record.id)
        assert adopted.record.state is VmState.PAUSED
        assert adopted.vm is not None and adopted.vm.state is VmState.PAUSED
        assert _process_state(record.pid) == "T"
        with pytest.raises(errors.FailedPrecondition, match="is paused"):
            await service.exec(record.id, ExecParams(argv=["true"]))
        await service.resume(record.id)
        assert second.store.get(record.id).state is VmState.RUNNING  # type: ignore[union-attr]
        assert await _run(service, record.id, "echo", "after restart") == b"after restart\n"
        await service.delete(record.id)
    finally:
        await second.close(stop_vms=True)


async def test_unknown_and_malformed_ids(node: Node, pausable: FakeVmmBackend) -> None:
    service = Service(node)
    with pytest.raises(errors.NotFound):
        await service.pause("vm-nosuchvm")
    with pytest.raises(errors.InvalidArgument):
        await service.resume("../etc")


async def test_snapshot_requests_that_cannot_be_served_change_nothing(
    node: Node, data_dir: Path, backend: FakeVmmBackend
) -> None:
    service = Service(node)
    record = (await service.create(CreateParams())).record
    assert not backend.capabilities().features & Feature.SNAPSHOT
    with pytest.raises(errors.FailedPrecondition, match="does not support snapshot"):
        await service.snapshot(record.id, "s1")
    with pytest.raises(errors.InvalidArgument, match="invalid snapshot name"):
        await service.snapshot(record.id, ".hidden")
    with pytest.raises(errors.NotFound, match="snapshot nosuch not found"):
        await service.create(CreateParams(from_snapshot="nosuch"))
    with pytest.raises(errors.NotFound, match="snapshot nosuch not found"):
        await service.delete_snapshot("nosuch")
    assert await service.list_snapshots() == []
    assert node.get(record.id).record.state is VmState.RUNNING
    assert [r.id for r in node.store.list()] == [record.id]  # the refused create left no row
    assert not (data_dir / "snapshots").exists() or list((data_dir / "snapshots").iterdir()) == []


async def test_leftover_partial_snapshots_are_removed_at_start(
    data_dir: Path, backend: FakeVmmBackend
) -> None:
    partial = data_dir / "snapshots" / ".s1.partial-abcd"
    partial.mkdir(parents=True)
    (partial / "state").write_bytes(b"half")
    node = await Node.open(node_config(data_dir))
    try:
        assert not partial.exists()
    finally:
        await node.close(stop_vms=True)
