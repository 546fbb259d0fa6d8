"""``clawpot_pool_vms{pool}`` follows the warm pool's ready VMs (read at scrape time) on the fake VMM
(tests/support/fake_vmm.py: a real agent process stands in for the VMM; it has no snapshots, so the
pool VM here is booted the way the pool's own tests make one, not restored)."""

from __future__ import annotations

from support.fake_vmm import FakeVmmBackend

from clawpot.metrics import instruments
from clawpot.node.node import Node, VmRequest
from clawpot.service.poolspec import PoolShape
from clawpot.service.service import CreateParams, Service
from clawpot.vmm.spec import BackendKind

SHAPE = PoolShape(1, 256, 1)


def _pool_vms() -> float | None:
    return instruments.REGISTRY.get_sample_value("clawpot_pool_vms", {"pool": SHAPE.name})


async def test_pool_size_gauge_follows_ready_vms(node: Node, backend: FakeVmmBackend) -> None:
    service = Service(node, pool=[SHAPE])
    assert service.pool is not None
    assert _pool_vms() == 0
    request = VmRequest(BackendKind.QEMU, 1, 256, pool_shape=SHAPE.name, shares_ram=True)
    nvm = node.reserve(request)
    await node.boot(nvm, request)
    service.pool.ready[SHAPE.key].append(nvm.id)  # what the filler does once a pool VM is ready
    assert _pool_vms() == 1
    # A matching create takes it from the pool (here its hand-out fails: the fake VMM's agent cannot
    # refresh a guest clock, so it is discarded and the create cold-boots): either way, one fewer ready.
    await service.create(CreateParams(vcpus=1, memory_mib=256))
    assert not service.pool.ready[SHAPE.key]
    assert _pool_vms() == 0
    await service.close()
    assert _pool_vms() is None  # no pool, no series
