"""The warm pool (``clawpot-server --pool SPEC``): VMs of each shape restored and ready, so a matching
``CreateVm`` is one agent call instead of a boot.

For each shape (``poolspec``), in the background once the server runs:

1. **Template.** One VM of the shape is cold-booted (a warm VM: hidden, not a user VM), snapshotted
   into a hidden template ``<data>/snapshots/.pool-<shape>`` and deleted. Its RAM is a shared memfd,
   so the template's memory file is what every pool VM maps copy-on-write (each costs
   ``limits.CLONE_CHARGE_MIB``, admission charges that).
2. **Fill.** Pool VMs are restored from it one at a time (``Node.boot`` with the template: each gets its
   own id, TAP, address, MAC and hostname through the agent's ``configure``, plus fresh entropy and the
   host's clock). The restore waited for the agent's answer, so the guest has run its agent's code
   paths once and QEMU's TCG translation cache holds them. It then waits paused (``keep_paused``, the
   default: no CPU while it waits, and on a busy host the faster hand-out, since idle running guests
   take CPU from everything, the hand-out included; bench/snapshot.py (a) measures both ways) or
   running (no QMP ``cont`` at hand-out).
3. **Hand-out** (``take``): a create of the same vcpus and memory, with no option the pool cannot honour
   (a snapshot, an address, peer traffic, another backend), gets the oldest ready VM: resumed, fresh
   entropy and clock again (it may have waited for hours), the caller's labels, origin pool. Its
   network slot was its own from the start: re-addressing at hand-out would cost a second configure
   and an ARP round, and a TAP made then would cost tens of ms; holding them costs one address each.
4. **Refill** after every hand-out, within the memory budget (``fits``: the service's admission). A
   user's create that does not fit evicts ready pool VMs (``evict``) before it is refused.

Fallbacks when no pool VM is ready: a restore from the shape's template (origin restore), else a cold
boot. Pool VMs are never listed (unless asked), never reachable by user calls (``Node.get``), and not
left behind: the server deletes them when it stops, and reconcile removes any a killed server left.

Metrics: ``clawpot_pool_vms{pool="<shape>"}`` (``instruments.POOL_SIZE``) is read from ``ready`` at
scrape time (a callback, not a value kept in step by hand), for as long as the pool lives.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from clawpot import errors, limits
from clawpot.metrics import instruments
from clawpot.node.node import Node, RestoreSource, VmRequest
from clawpot.node.store import Origin
from clawpot.node.vms import VmView
from clawpot.service.poolspec import PoolShape
from clawpot.vm.state import VmState
from clawpot.vmm.snapshot import read_manifest
from clawpot.vmm.spec import BackendKind

log = logging.getLogger(__name__)


class WarmPool:
    def __init__(
        self,
        node: Node,
        shapes: list[PoolShape],
        fits: Callable[[PoolShape], bool],
        *,
        keep_paused: bool = True,
        backend: BackendKind = BackendKind.QEMU,
    ) -> None:
        self.node = node
        self.shapes = {shape.key: shape for shape in shapes}
        self.fits = fits
        self.keep_paused = keep_paused
        self.backend = backend
        self.ready: dict[tuple[int, int], collections.deque[str]] = {
            s.key: collections.deque() for s in shapes
        }
        self.templates: dict[tuple[int, int], RestoreSource] = {}
        self._wake = {s.key: asyncio.Event() for s in shapes}
        self._tasks: list[asyncio.Task[None]] = []
        for shape in shapes:
            # Called by the scrape's thread: len() of a deque is one atomic read.
            instruments.POOL_SIZE.labels(pool=shape.name).set_function(
                functools.partial(self.ready_count, shape)
            )

    # -- life ---------------------------------------------------------------------------------------

    def start(self) -> None:
        for shape in self.shapes.values():
            self._tasks.append(asyncio.create_task(self._keep(shape), name=f"pool {shape.name}"))

    async def close(self) -> None:
        """Stop filling, delete every pool VM that was not handed out, remove the templates."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        warm = [nvm.id for nvm in self.node.vms.values() if nvm.record.origin is Origin.WARM]
        await asyncio.gather(*(self.node.delete(vm_id, warm=True) for vm_id in warm), return_exceptions=True)
        for source in self.templates.values():
            await asyncio.to_thread(_remove_tree, source.directory)
        for shape in self.shapes.values():
            with contextlib.suppress(KeyError):  # a series no longer served: no pool behind it
                instruments.POOL_SIZE.remove(shape.name)

    # -- hand-out -----------------------------------------------------------------------------------

    def shape_for(self, vcpus: int, memory_mib: int) -> PoolShape | None:
        return self.shapes.get((vcpus, memory_mib))

    async def take(self, shape: PoolShape, labels: dict[str, str]) -> VmView | None:
        """A ready VM of ``shape`` handed out as a user VM, or None when none is ready (or each one tried
        failed its hand-out: it is discarded)."""
        queue = self.ready[shape.key]
        try:
            while queue:
                vm_id = queue.popleft()
                nvm = self.node.vms.get(vm_id)
                if nvm is None or nvm.deleting:
                    continue
                try:
                    return await self.node.hand_out(nvm, labels)
                except errors.ServerError as exc:
                    log.warning("pool %s: VM %s not handed out (%s); discarding it", shape.name, vm_id, exc)
                    self._discard(vm_id)
            return None
        finally:
            # The refill starts once the hand-out is done: its restore would compete with it.
            self._wake[shape.key].set()

    def template(self, shape: PoolShape) -> RestoreSource | None:
        """The shape's template, for the fallback restore when the pool is empty."""
        return self.templates.get(shape.key)

    def evict(self) -> bool:
        """Give up one ready pool VM (the newest of the fullest shape) to make room for a user's create;
        False when none is ready. Admission stops counting it at once; its delete runs on."""
        fullest = max(self.ready.values(), key=len, default=None)
        if not fullest:
            return False
        vm_id = fullest.pop()
        nvm = self.node.vms.get(vm_id)
        if nvm is not None:
            nvm.evicted = True
        self._discard(vm_id)
        log.info("pool: VM %s evicted to make room for a create", vm_id)
        return True

    def ready_count(self, shape: PoolShape) -> int:
        return len(self.ready[shape.key])

    # -- filling ------------------------------------------------------------------------------------

    async def _keep(self, shape: PoolShape) -> None:
        """The shape's template, then ready VMs up to its count, for as long as the server runs."""
        while shape.key not in self.templates:
            try:
                self.templates[shape.key] = await self._make_template(shape)
            except Exception as exc:  # a broken image, no memory: try again later, never spin
                log.warning(
                    "pool %s: no template (%s); retrying in %.0f s", shape.name, exc, limits.POOL_RETRY_DELAY
                )
                await asyncio.sleep(limits.POOL_RETRY_DELAY)
        wake = self._wake[shape.key]
        while True:
            if len(self.ready[shape.key]) < shape.count and self.fits(shape):
                try:
                    await self._fill_one(shape, self.templates[shape.key])
                    continue
                except Exception as exc:
                    log.warning(
                        "pool %s: refill failed (%s); retrying in %.0f s",
                        shape.name,
                        exc,
                        limits.POOL_RETRY_DELAY,
                    )
                    await asyncio.sleep(limits.POOL_RETRY_DELAY)
                    continue
            wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), limits.POOL_RECHECK_INTERVAL)

    def _request(self, shape: PoolShape, *, shares_ram: bool) -> VmRequest:
        return VmRequest(
            backend=self.backend,
            vcpus=shape.vcpus,
            memory_mib=shape.memory_mib,
            pool_shape=shape.name,
            shares_ram=shares_ram,
        )

    async def _make_template(self, shape: PoolShape) -> RestoreSource:
        started = time.monotonic()
        request = self._request(shape, shares_ram=False)
        if not self.fits(shape):
            raise errors.ResourceExhausted(f"no room for the {shape.name} template VM")
        nvm = self.node.reserve(request)
        await self.node.boot(nvm, request)
        directory = self.node.snapshots.root / f".pool-{shape.name}"
        try:
            await asyncio.to_thread(_remove_tree, directory)  # a template from an earlier run of ours
            await self.node.snapshot_template(nvm, directory)
            source = RestoreSource(directory, await asyncio.to_thread(read_manifest, directory))
        finally:
            await self.node.delete(nvm.id, warm=True)
        log.info("pool %s: template ready in %.1f s", shape.name, time.monotonic() - started)
        return source

    async def _fill_one(self, shape: PoolShape, template: RestoreSource) -> None:
        started = time.monotonic()
        request = self._request(shape, shares_ram=True)
        nvm = self.node.reserve(request)
        await self.node.boot(nvm, request, template)
        if self.keep_paused:
            await self.node.pause(nvm.id, warm=True)
        if nvm.deleting or nvm.record.state not in (VmState.RUNNING, VmState.PAUSED):
            return
        self.ready[shape.key].append(nvm.id)
        log.info(
            "pool %s: VM %s ready (%d of %d) in %.0f ms",
            shape.name,
            nvm.id,
            len(self.ready[shape.key]),
            shape.count,
            (time.monotonic() - started) * 1000,
        )

    def _discard(self, vm_id: str) -> None:
        async def delete() -> None:
            with contextlib.suppress(errors.ServerError):
                await self.node.delete(vm_id, warm=True)

        task = asyncio.get_running_loop().create_task(delete(), name=f"pool discard {vm_id}")
        self._tasks.append(task)


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
