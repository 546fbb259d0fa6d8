"""Warm pool VMs in the service and node, on the fake VMM (tests/support/fake_vmm.py): hidden from users,
evicted for a user's create that does not fit, removed by reconcile after a crash. The pool filling
from a real snapshot and handing out real VMs is tests/integration/test_fork_pool.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.fake_vmm import FakeVmmBackend, node_config

from clawpot import errors, limits
from clawpot.node.node import Node, VmRequest
from clawpot.node.store import Origin
from clawpot.service.poolspec import PoolShape
from clawpot.service.service import CreateParams, Service
from clawpot.vm import procfs, validation
from clawpot.vmm.spec import BackendKind

SHAPE = PoolShape(1, 256, 1)


async def _warm_vm(service: Service) -> str:
    """A pool VM as the pool makes one (here booted, not restored: the fake VMM has no snapshots)."""
    request = VmRequest(BackendKind.QEMU, 1, 256, pool_shape=SHAPE.name, shares_ram=True)
    nvm = service.node.reserve(request)
    await service.node.boot(nvm, request)
    assert service.pool is not None
    service.pool.ready[SHAPE.key].append(nvm.id)
    return nvm.id


async def test_pool_vms_are_not_user_vms(node: Node, backend: FakeVmmBackend) -> None:
    service = Service(node, pool=[SHAPE])
    warm = await _warm_vm(service)
    assert node.vms[warm].record.origin is Origin.WARM
    for call in (service.get, service.delete, service.pause):
        with pytest.raises(errors.NotFound):
            await call(warm)
    with pytest.raises(errors.NotFound):
        await service.fork(warm, 1)
    assert [v.record.id for v in (await service.list_page(0, ""))[0]] == []
    assert [v.record.id for v in (await service.list_page(0, "", include_pool=True))[0]] == [warm]


async def test_a_user_create_that_does_not_fit_evicts_a_ready_pool_vm(
    node: Node, backend: FakeVmmBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = Service(node, pool=[SHAPE])
    warm = await _warm_vm(service)
    # Room for one cold 512 MiB VM (+ overhead) only if the pool VM's clone charge is given back.
    total = 512 + limits.VM_OVERHEAD_MIB + limits.CLONE_CHARGE_MIB - 1
    monkeypatch.setattr(validation, "host_total_mib", lambda: total)
    monkeypatch.setattr(validation, "host_available_mib", lambda: total)
    view = await service.create(CreateParams(memory_mib=512))
    assert view.record.origin is Origin.COLD
    assert service.pool is not None and not service.pool.ready[SHAPE.key]
    assert node.vms.get(warm) is None or node.vms[warm].evicted
    # With no pool VM left to give up, the next one is refused as before.
    with pytest.raises(errors.ResourceExhausted):
        await service.create(CreateParams(memory_mib=512))


async def test_reconcile_removes_pool_vms_a_dead_server_left(data_dir: Path, backend: FakeVmmBackend) -> None:
    node = await Node.open(node_config(data_dir))
    service = Service(node, pool=[SHAPE])
    warm = await _warm_vm(service)
    user = (await service.create(CreateParams(memory_mib=320))).record.id
    pid, ticks = node.vms[warm].record.pid, node.vms[warm].record.vmm_start_ticks
    await node.close(stop_vms=False)  # as after a kill -9: rows, VMMs and directories stay
    assert pid is not None and procfs.is_alive(pid, ticks)
    reopened = await Node.open(node_config(data_dir))
    try:
        assert warm not in reopened.vms and user in reopened.vms
        assert [r.id for r in reopened.store.list()] == [user]
        assert not (data_dir / "vms" / warm).exists()
        assert not procfs.is_alive(pid, ticks)
    finally:
        await reopened.close(stop_vms=True)
