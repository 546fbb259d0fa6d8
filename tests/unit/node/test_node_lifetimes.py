"""VM lifetimes on the fake VMM (a real agent process stands in for the hypervisor; see
tests/support/fake_vmm.py): a VM is deleted when its lifetime ends, the deadline is stored and acts
after a restart, it can be moved or removed, and E2B's autoPause pauses instead. The real-VM proof is
tests/integration/test_vm_lifetimes.py."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from support.agent_harness import pid_alive
from support.fake_vmm import FakeVmmBackend, node_config

from clawpot import errors
from clawpot.node.lifetimes import Expiry, Lifetime, Reaper
from clawpot.node.node import Node
from clawpot.node.store import VmRecord
from clawpot.node.vms import NodeVm
from clawpot.service.service import CreateParams, Service
from clawpot.vm.state import VmState
from clawpot.vmm.base import Feature
from clawpot.vmm.spec import BackendKind


async def _until(predicate: object, within: float = 10.0) -> None:
    assert callable(predicate)
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while not predicate():
        assert loop.time() < end, "condition not reached in time"
        await asyncio.sleep(0.02)


async def test_a_vm_is_deleted_when_its_lifetime_ends(
    node: Node, data_dir: Path, backend: FakeVmmBackend
) -> None:
    service = Service(node)
    view = await service.create(CreateParams(timeout=1))
    assert view.lifetime is not None and view.lifetime.expires_at <= time.time() + 1
    assert node.store.lifetimes().keys() == {view.record.id}
    pid = view.record.pid
    assert pid is not None
    await _until(lambda: view.record.id not in node.vms, within=5)
    assert not pid_alive(pid)
    assert node.store.list() == [] and node.store.lifetimes() == {}
    assert list((data_dir / "vms").iterdir()) == []


async def test_no_lifetime_unless_asked_or_defaulted(node: Node, backend: FakeVmmBackend) -> None:
    plain = await Service(node).create(CreateParams())
    assert plain.lifetime is None
    defaulted = await Service(node, default_timeout=600).create(CreateParams())
    assert defaulted.lifetime is not None
    assert 590 < defaulted.lifetime.expires_at - time.time() <= 600


async def test_set_timeout_extends_shortens_and_removes(node: Node, backend: FakeVmmBackend) -> None:
    service = Service(node)
    vm_id = (await service.create(CreateParams(timeout=2))).record.id
    extended = await service.set_timeout(vm_id, 3600)
    assert extended.lifetime is not None and extended.lifetime.expires_at > time.time() + 3500
    await asyncio.sleep(2.5)  # past the first deadline: the reaper must have seen the new one
    assert node.get(vm_id).record.state is VmState.RUNNING
    removed = await service.set_timeout(vm_id, 0)
    assert removed.lifetime is None and node.store.lifetimes() == {}
    await service.set_timeout(vm_id, 1)
    await _until(lambda: vm_id not in node.vms, within=5)


@pytest.mark.parametrize("seconds", [-1, 30 * 24 * 3600 + 1])
async def test_out_of_range_timeouts_are_refused(node: Node, backend: FakeVmmBackend, seconds: int) -> None:
    service = Service(node)
    with pytest.raises(errors.InvalidArgument, match="timeout"):
        await service.create(CreateParams(timeout=seconds))
    assert node.vms == {}
    vm_id = (await service.create(CreateParams())).record.id
    with pytest.raises(errors.InvalidArgument, match="timeout"):
        await service.set_timeout(vm_id, seconds)
    with pytest.raises(errors.NotFound):
        await service.set_timeout("nosuchvm", 10)


async def test_the_deadline_survives_a_restart_and_acts_after_it(
    data_dir: Path, backend: FakeVmmBackend
) -> None:
    first = await Node.open(node_config(data_dir))
    view = await Service(first).create(CreateParams(timeout=2))
    assert view.lifetime is not None
    await first.close(stop_vms=False)  # the VM keeps running while no server does
    await asyncio.sleep(2.2)  # the deadline passes while the server is down

    second = await Node.open(node_config(data_dir))
    try:
        # Adopted with its deadline, which has passed: the reaper deletes it at once.
        await _until(lambda: view.record.id not in second.vms, within=5)
        assert second.store.list() == [] and second.store.lifetimes() == {}
    finally:
        await second.close(stop_vms=True)


async def test_a_deadline_is_kept_across_a_restart(data_dir: Path, backend: FakeVmmBackend) -> None:
    first = await Node.open(node_config(data_dir))
    view = await Service(first).create(CreateParams(timeout=600))
    await first.close(stop_vms=False)
    second = await Node.open(node_config(data_dir))
    try:
        assert second.get(view.record.id).lifetime == view.lifetime
    finally:
        await second.close(stop_vms=True)


async def test_auto_pause_pauses_a_running_vm_and_drops_its_deadline(
    node: Node, backend: FakeVmmBackend
) -> None:
    backend.features = Feature.PAUSE
    service = Service(node)
    vm_id = (await service.create(CreateParams(timeout=1, on_expiry=Expiry.PAUSE))).record.id
    await _until(lambda: node.get(vm_id).record.state is VmState.PAUSED, within=5)
    await _until(lambda: node.get(vm_id).lifetime is None)
    assert node.store.lifetimes() == {}
    await service.delete(vm_id)


async def test_auto_pause_without_pause_support_deletes(node: Node, backend: FakeVmmBackend) -> None:
    backend.features = Feature(0)
    vm_id = (await Service(node).create(CreateParams(timeout=1, on_expiry=Expiry.PAUSE))).record.id
    await _until(lambda: vm_id not in node.vms, within=5)


async def test_a_paused_vm_expires_too(node: Node, backend: FakeVmmBackend) -> None:
    backend.features = Feature.PAUSE
    service = Service(node)
    vm_id = (await service.create(CreateParams(timeout=2))).record.id
    await service.pause(vm_id)
    await _until(lambda: vm_id not in node.vms, within=5)


def _nvm(vm_id: str, lifetime: Lifetime | None) -> NodeVm:
    record = VmRecord(vm_id, VmState.RUNNING, BackendKind.QEMU, 1, 256, Path("/nonexistent") / vm_id)
    nvm = NodeVm(record, agent_timeout=1.0)
    nvm.lifetime = lifetime
    return nvm


async def test_the_reaper_acts_in_deadline_order_retries_failures_and_skips_moved_deadlines() -> None:
    """The reaper's own logic, with a clock and an action of the test's (the node's real delete and
    pause are exercised above)."""
    now = [1000.0]
    vms = {
        "late": _nvm("late", Lifetime(1003.0)),
        "soon": _nvm("soon", Lifetime(1001.0)),
        "never": _nvm("never", None),
        "flaky": _nvm("flaky", Lifetime(1002.0)),
    }
    acted: list[str] = []
    failures = {"flaky": 1}

    async def expire(nvm: NodeVm) -> None:
        if failures.get(nvm.id, 0) > 0:
            failures[nvm.id] -= 1
            raise RuntimeError("VMM did not stop")
        acted.append(nvm.id)
        nvm.lifetime = None

    reaper = Reaper(vms, expire, clock=lambda: now[0])
    reaper.start()
    try:
        for step in range(1, 12):  # time advances one second per step; the reaper is woken each time
            now[0] = 1000.0 + step
            if step == 2:
                vms["late"].lifetime = Lifetime(1020.0)  # moved before it was due: not acted on at 1003
            reaper.changed()
            await asyncio.sleep(0.05)
        assert acted == ["soon", "flaky"]  # flaky: failed at 1002, retried 5 s later
        assert vms["late"].lifetime is not None and "never" not in acted
    finally:
        await reaper.stop()


async def test_close_right_after_a_deadline_change_does_not_hang(
    data_dir: Path, backend: FakeVmmBackend
) -> None:
    # The reaper is woken and cancelled in the same turn of the loop: its sleep must still end.
    node = await Node.open(node_config(data_dir))
    vm_id = (await Service(node).create(CreateParams())).record.id
    await Service(node).set_timeout(vm_id, 600)
    await asyncio.wait_for(node.close(stop_vms=True), 30)
