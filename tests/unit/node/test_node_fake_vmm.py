"""The node's VM lifecycle on the fake VMM (a real agent process stands in for the hypervisor; see
tests/support/fake_vmm.py): create, exec, delete, crash → Error, cancelled create, failed boots,
adoption after a restart. No root, no VM; the real-VM integration tests stay the proof."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from support import fake_vmm
from support.agent_harness import pid_alive
from support.fake_vmm import FakeVmmBackend, node_config
from test_store_schema import UNVERSIONED_NETWORK_DDL, UNVERSIONED_STORE_DDL

from clawpot import errors
from clawpot.node.node import Node
from clawpot.node.records import endpoint_to_text
from clawpot.node.sessions import ExecParams
from clawpot.service.service import CreateParams, Service
from clawpot.vm import procfs
from clawpot.vm.state import VmState
from clawpot.vmm.base import Feature
from clawpot.vmm.spec import Drive, VmSpec


async def _run(service: Service, vm_id: str, *argv: str) -> tuple[bytes, int | None]:
    session = await service.exec(vm_id, ExecParams(argv=list(argv)))
    out = b""
    async for event in session.events():
        out += event.stdout or b""
    status = await session.result()
    await session.close()
    return out, status.exit_code


async def _until(predicate: object, within: float = 10.0) -> None:
    assert callable(predicate)
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while not predicate():
        assert loop.time() < end, "condition not reached in time"
        await asyncio.sleep(0.02)


def _nothing_left(node: Node, data_dir: Path) -> None:
    assert node.store.list() == []
    assert node.vms == {}
    assert list((data_dir / "vms").iterdir()) == []


async def test_create_exec_delete(node: Node, data_dir: Path, backend: FakeVmmBackend) -> None:
    service = Service(node)
    view = await service.create(CreateParams(labels={"team": "a"}))
    record = view.record
    assert record.state is VmState.RUNNING
    assert record.pid is not None and pid_alive(record.pid)
    assert node.store.get(record.id) == record
    out, code = await _run(service, record.id, "echo", "hello")
    assert (out, code) == (b"hello\n", 0)
    await service.delete(record.id)
    assert not pid_alive(record.pid)
    _nothing_left(node, data_dir)


async def test_a_vmm_crash_moves_the_vm_to_error_and_frees_it(node: Node, backend: FakeVmmBackend) -> None:
    service = Service(node)
    record = (await service.create(CreateParams())).record
    assert record.pid is not None
    fake_vmm.crash(record.pid)
    await _until(lambda: node.get(record.id).record.state is VmState.ERROR)
    crashed = node.get(record.id).record
    assert "SIGKILL" in crashed.error
    assert node.store.get(record.id) == crashed
    release = node.get(record.id).release_task
    assert release is not None
    await release  # released after the crash: all but its console, kept for `clawpot logs`
    assert [p.name for p in record.vm_dir.iterdir()] == [fake_vmm.CONSOLE]
    with pytest.raises(errors.FailedPrecondition, match="is Error, not Running"):
        await service.exec(record.id, ExecParams(argv=["true"]))
    await service.delete(record.id)
    assert node.store.list() == []
    assert not record.vm_dir.exists()


async def test_a_cancelled_create_leaves_nothing(node: Node, data_dir: Path, backend: FakeVmmBackend) -> None:
    service = Service(node)
    create = asyncio.create_task(service.create(CreateParams(labels={fake_vmm.LABEL: "hang"})))
    await _until(lambda: bool(backend.started) and backend.started[0].pid is not None)
    pid = backend.started[0].pid
    assert pid is not None and pid_alive(pid)
    assert len(node.store.list()) == 1  # recorded (Starting) before anything was made
    create.cancel()
    with pytest.raises(asyncio.CancelledError):
        await create
    assert not pid_alive(pid)
    _nothing_left(node, data_dir)


@pytest.mark.parametrize(
    ("mode", "said"), [("exit", "exited with status 3"), ("refuse", "refused its configuration")]
)
async def test_a_failed_boot_is_unavailable_and_leaves_nothing(
    node: Node, data_dir: Path, backend: FakeVmmBackend, mode: str, said: str
) -> None:
    with pytest.raises(errors.Unavailable, match=said):
        await Service(node).create(CreateParams(labels={fake_vmm.LABEL: mode}))
    _nothing_left(node, data_dir)


async def test_a_restarted_node_adopts_running_vms(data_dir: Path, backend: FakeVmmBackend) -> None:
    first = await Node.open(node_config(data_dir))
    record = (await Service(first).create(CreateParams())).record
    await first.close(stop_vms=False)
    assert record.pid is not None and pid_alive(record.pid)

    second = await Node.open(node_config(data_dir))
    try:
        service = Service(second)
        adopted = second.get(record.id)
        assert adopted.record.state is VmState.RUNNING
        assert [r.pid for r in backend.attached] == [record.pid]
        out, code = await _run(service, record.id, "sh", "-c", "echo $$ >/dev/null; echo adopted")
        assert (out, code) == (b"adopted\n", 0)
        # The same handle as a booted VM: its VMM is watched, a crash is seen.
        fake_vmm.crash(record.pid)
        await _until(lambda: second.get(record.id).record.state is VmState.ERROR)
        assert f"VMM process {record.pid} exited" in second.get(record.id).record.error
        await service.delete(record.id)
        _nothing_left(second, data_dir)
    finally:
        await second.close(stop_vms=True)


async def test_an_adopted_vm_is_deleted_like_a_booted_one(data_dir: Path, backend: FakeVmmBackend) -> None:
    first = await Node.open(node_config(data_dir))
    record = (await Service(first).create(CreateParams())).record
    await first.close(stop_vms=False)
    second = await Node.open(node_config(data_dir))
    try:
        await Service(second).delete(record.id)
        assert record.pid is not None and not pid_alive(record.pid)
        _nothing_left(second, data_dir)
    finally:
        await second.close(stop_vms=True)


async def test_a_vm_whose_vmm_died_while_no_server_ran_is_error(
    data_dir: Path, backend: FakeVmmBackend
) -> None:
    first = await Node.open(node_config(data_dir))
    record = (await Service(first).create(CreateParams())).record
    await first.close(stop_vms=False)
    assert record.pid is not None
    fake_vmm.crash(record.pid)
    await _until(lambda: not pid_alive(record.pid))
    second = await Node.open(node_config(data_dir))
    try:
        found = second.get(record.id).record
        assert found.state is VmState.ERROR
        assert "VMM process gone when the server restarted" in found.error
        # Only its console is left, for `clawpot logs`, until the VM is deleted.
        assert [p.name for p in record.vm_dir.iterdir()] == [fake_vmm.CONSOLE]
        assert backend.attached == []
        await second.delete(record.id)
        assert not record.vm_dir.exists()
    finally:
        await second.close(stop_vms=True)


async def test_an_orphan_directory_is_removed_at_start(data_dir: Path, backend: FakeVmmBackend) -> None:
    orphan = data_dir / "vms" / "no-row-owns-this"
    orphan.mkdir(parents=True)
    (orphan / "console.log").write_text("left over\n")
    node = await Node.open(node_config(data_dir))
    try:
        assert not orphan.exists()
    finally:
        await node.close(stop_vms=True)


async def test_an_operation_the_backend_lacks_fails_before_it_begins(
    node: Node, backend: FakeVmmBackend
) -> None:
    record = (await Service(node).create(CreateParams())).record
    assert not backend.capabilities().features & Feature.PAUSE
    with pytest.raises(errors.FailedPrecondition, match="does not support pause"):
        await node.pause(record.id)
    with pytest.raises(errors.FailedPrecondition, match="does not support pause"):
        await node.resume(record.id)
    # Nothing was touched: the VM still runs and answers.
    assert node.get(record.id).record.state is VmState.RUNNING
    out, _ = await _run(Service(node), record.id, "echo", "still")
    assert out == b"still\n"


async def test_a_second_node_on_the_same_data_dir_is_refused(node: Node, data_dir: Path) -> None:
    from clawpot.node.datadir import NodeError

    with pytest.raises(NodeError, match="another clawpot-server is using"):
        await Node.open(node_config(data_dir))
    assert node.store.list() == []  # the running node was not disturbed


async def test_a_vm_in_a_state_db_from_before_versioning_is_adopted(
    data_dir: Path, backend: FakeVmmBackend
) -> None:
    """The upgrade: a state.db in the previous main's schema (user_version 0, the DDL copied verbatim in
    test_store_schema), with a VM Running whose VMM still runs, is adopted; exec works; delete cleans."""
    vm_id = "0a1b2c3d"
    vm_dir = data_dir / "vms" / vm_id
    vm_dir.mkdir(parents=True)
    spec = VmSpec(
        kernel=data_dir / "assets" / "vmlinux", boot_args="", drives=(Drive("rootfs", vm_dir, True),)
    )
    vmm = backend.prepare(spec, vm_dir)
    await vmm.start()
    assert vmm.pid is not None
    db = sqlite3.connect(data_dir / "state.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(UNVERSIONED_STORE_DDL)
    db.executescript(UNVERSIONED_NETWORK_DDL)
    db.execute(
        "INSERT INTO vms (id, state, backend, vcpus, memory_mib, ip_address, labels, created_at, error,"
        " vm_dir, pid, allow_peers, vmm_start_ticks, agent_endpoint)"
        " VALUES (?, 'Running', 'qemu', 1, 256, '', '{}', 1764000000.5, '', ?, ?, 0, ?, ?)",
        (vm_id, str(vm_dir), vmm.pid, procfs.start_ticks(vmm.pid), endpoint_to_text(vmm.agent_endpoint)),
    )
    db.close()
    vmm.detach()  # the "previous server" is gone; its VMM runs on

    node = await Node.open(node_config(data_dir))
    try:
        assert node.get(vm_id).record.state is VmState.RUNNING
        out, code = await _run(Service(node), vm_id, "echo", "upgraded")
        assert (out, code) == (b"upgraded\n", 0)
        await Service(node).delete(vm_id)
        assert not pid_alive(vmm.pid)
        _nothing_left(node, data_dir)
    finally:
        await node.close(stop_vms=True)


async def test_concurrent_calls_share_one_recent_ping(node: Node, backend: FakeVmmBackend) -> None:
    """Calls queue on the VM's agent lock; a ping answered while they waited proves the connection for
    the ones behind it, so 20 concurrent execs do not ping 20 times in a row. One at a time, each pings."""
    service = Service(node)
    record = (await service.create(CreateParams())).record
    link = node.get(record.id).agent
    await link.connected(5.0)  # the boot's connection, proven once
    client = link.client
    assert client is not None
    pings = 0
    real_ping = client.ping

    async def counted_ping() -> None:
        nonlocal pings
        pings += 1
        await real_ping()

    client.ping = counted_ping  # type: ignore[method-assign]
    results = await asyncio.gather(*(_run(service, record.id, "echo", str(i)) for i in range(20)))
    assert results == [(f"{i}\n".encode(), 0) for i in range(20)]
    assert pings <= 3, pings
    pings = 0
    for i in range(3):
        assert await _run(service, record.id, "echo", str(i)) == (f"{i}\n".encode(), 0)
    assert pings == 3
