"""``--vmm auto``: the KVM probe runs when the node opens, off the calls' path. A create that needs its
answer waits for it; every other call is served meanwhile. The probe here is a FAKE (a slow coroutine
we release by hand): the real one boots a QEMU VM, which needs the VM assets."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from support.fake_vmm import FakeVmmBackend, node_config

from clawpot.node.node import Node
from clawpot.service.service import CreateParams, Service
from clawpot.vm.state import VmState
from clawpot.vmm import probe
from clawpot.vmm.spec import BackendKind


class SlowProbe:
    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.answer: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.calls = 0

    async def __call__(self, data: Path | None = None) -> bool:
        self.calls += 1
        self.started.set()
        return await self.answer


async def test_the_probe_never_blocks_serving(
    data_dir: Path, backend: FakeVmmBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow = SlowProbe()
    monkeypatch.setattr(probe, "kvm_boots_guests_async", slow)
    # Open returns while the probe is still running.
    node = await asyncio.wait_for(Node.open(node_config(data_dir, default_backend=None)), 10)
    try:
        await asyncio.wait_for(slow.started.wait(), 5)
        service = Service(node)
        waiting = asyncio.create_task(service.create(CreateParams()))  # needs the answer
        # Served meanwhile: a create that names its backend, list, get.
        named = await asyncio.wait_for(service.create(CreateParams(backend=BackendKind.QEMU)), 30)
        views, _ = await service.list_page(0, "")
        assert [v.record.id for v in views if v.record.state is VmState.RUNNING] == [named.record.id]
        assert (await service.get(named.record.id)).record.state is VmState.RUNNING
        assert not waiting.done()
        slow.answer.set_result(False)  # KVM cannot boot guests here: auto means QEMU
        created = await asyncio.wait_for(waiting, 30)
        assert created.record.backend is BackendKind.QEMU
        assert created.record.state is VmState.RUNNING
        assert slow.calls == 1  # probed once, at start, for every create that waited
    finally:
        await node.close(stop_vms=True)


async def test_a_cancelled_create_does_not_cancel_the_probe(
    data_dir: Path, backend: FakeVmmBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow = SlowProbe()
    monkeypatch.setattr(probe, "kvm_boots_guests_async", slow)
    node = await Node.open(node_config(data_dir, default_backend=None))
    try:
        service = Service(node)
        first = asyncio.create_task(service.create(CreateParams()))
        await asyncio.wait_for(slow.started.wait(), 5)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        assert node.store.list() == []  # nothing was reserved while it waited
        slow.answer.set_result(False)
        created = await asyncio.wait_for(service.create(CreateParams()), 30)
        assert created.record.backend is BackendKind.QEMU
        assert slow.calls == 1
    finally:
        await node.close(stop_vms=True)
