"""``Service``: what answers the API, above the node. Validation, defaults, admission, placement.

Every request is checked (``validate``: bounds from ``limits``) before anything has a side effect,
defaults come from ``limits``, a create is admitted against host memory (``admission``) and placed
on the one node there is today. The node does the work; what either raises is a ``clawpot.errors``
kind, which the gRPC servicer turns into a status code. No gRPC here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field

from clawpot import errors, limits
from clawpot.network.policydb import VmNetworkPolicy
from clawpot.node.events import Watcher
from clawpot.node.lifetimes import Expiry, Lifetime
from clawpot.node.node import Node, VmRequest
from clawpot.node.sessions import DownloadHandle, ExecParams, ExecSession
from clawpot.node.snapshots import SnapshotInfo
from clawpot.node.store import Origin
from clawpot.node.vms import VmView
from clawpot.service import admission, paging, validate
from clawpot.service.pool import WarmPool
from clawpot.service.poolspec import PoolShape
from clawpot.vm import validation
from clawpot.vmm.spec import BackendKind

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CreateParams:
    vcpus: int = limits.DEFAULT_VCPUS
    memory_mib: int = limits.DEFAULT_MEMORY_MIB
    disk_mib: int = limits.DEFAULT_DISK_MIB
    backend: BackendKind | None = None
    labels: dict[str, str] = field(default_factory=dict)
    ip_address: str | None = None
    allow_peers: bool = False
    # Restore this snapshot instead of a cold boot. vcpus, memory_mib, disk_mib and backend then come
    # from the snapshot: 0 / None take them, any other value must match it.
    from_snapshot: str | None = None
    # Egress policy and published ports (network/policy.py): --allow-out, --deny-out, --no-internet,
    # --publish.
    allow_out: tuple[str, ...] = ()
    deny_out: tuple[str, ...] = ()
    no_internet: bool = False
    publish: tuple[str, ...] = ()
    # Seconds the VM lives once it runs (counted from when its create returns); None: the server's
    # default (``Service.default_timeout``).
    timeout: int | None = None
    # What ends it then: deleted, or (E2B's autoPause) paused.
    on_expiry: Expiry = Expiry.DELETE


class Service:
    def __init__(
        self,
        node: Node,
        *,
        memory_overcommit: float = limits.DEFAULT_MEMORY_OVERCOMMIT,
        default_timeout: int | None = None,
        pool: list[PoolShape] | None = None,
        pool_paused: bool = True,
    ) -> None:
        self.node = node
        self.memory_overcommit = memory_overcommit
        self._log_streams = 0
        # The lifetime of a VM created without one (clawpot-server --vm-timeout); None: unlimited.
        self.default_timeout = default_timeout
        self.pool = WarmPool(node, pool, self._pool_fits, keep_paused=pool_paused) if pool else None

    def start(self) -> None:
        """Start the background work (the warm pool's filling)."""
        if self.pool is not None:
            self.pool.start()

    async def close(self) -> None:
        """Stop the background work; the warm pool's VMs and templates are removed."""
        if self.pool is not None:
            await self.pool.close()

    def _lifetime(self, params: CreateParams) -> Lifetime | None:
        seconds = params.timeout if params.timeout is not None else self.default_timeout
        if seconds is None:
            return None
        validate.vm_timeout(seconds)
        return Lifetime.from_now(seconds, params.on_expiry)

    def _started(self, view: VmView, params: CreateParams) -> VmView:
        """A lifetime counts from the moment the VM runs (its create returns), not from the request: a
        slow boot (seconds under TCG, more on a loaded host) must not eat a short lifetime. The deadline
        stored at reserve time only matters if the server dies mid-boot. A VM from the warm pool had
        no lifetime before it was handed out: it gets the one asked for here too."""
        seconds = params.timeout if params.timeout is not None else self.default_timeout
        if seconds is None:
            return view
        try:
            return self.node.set_lifetime(view.record.id, Lifetime.from_now(seconds, params.on_expiry))
        except (errors.NotFound, errors.FailedPrecondition):
            return view  # deleted as soon as it ran: the create still happened

    async def create(self, params: CreateParams) -> VmView:
        if params.from_snapshot is not None:
            return await self._create_from_snapshot(params, params.from_snapshot)
        validate.vcpus(params.vcpus)
        validate.memory_mib(params.memory_mib)
        validate.disk_mib(params.disk_mib)
        if params.ip_address:
            validate.ip_address(params.ip_address)
            if self.node.network is None:
                raise errors.InvalidArgument("this server runs without networking (--no-network)")
        validate.labels(params.labels)
        policy = self._network_policy(params)
        lifetime = self._lifetime(params)
        # May wait for the auto probe started with the node; other calls are served meanwhile.
        kind = await self.node.backends.resolve(params.backend)
        self.node.backends.get(kind)  # UNAVAILABLE now, before anything is reserved
        if (view := await self._from_pool(params, kind, policy, lifetime)) is not None:
            return self._started(view, params)
        request = VmRequest(
            backend=kind,
            vcpus=params.vcpus,
            memory_mib=params.memory_mib,
            disk_mib=params.disk_mib,
            labels=dict(params.labels),
            ip_address=params.ip_address or None,
            allow_peers=params.allow_peers,
            network_policy=policy,
            lifetime=lifetime,
        )
        # Admission and reservation with no await in between: concurrent creates cannot overbook.
        self._admit(params.memory_mib)
        nvm = self.node.reserve(request)
        view = await self.node.boot(nvm, request)
        log.info("VM %s: cold boot", view.record.id)
        return self._started(view, params)

    async def _from_pool(
        self, params: CreateParams, kind: BackendKind, policy: VmNetworkPolicy, lifetime: Lifetime | None
    ) -> VmView | None:
        """A matching create served by the warm pool: a ready VM handed out, else a restore of the
        shape's template; None when the pool cannot serve it (then: a cold boot). A ready VM runs with
        the default network policy, so a create asking for another one restores from the template."""
        pool = self.pool
        shape = pool.shape_for(params.vcpus, params.memory_mib) if pool is not None else None
        if (
            pool is None
            or shape is None
            or kind is not pool.backend
            or params.ip_address
            or params.allow_peers
        ):
            return None
        started = time.monotonic()
        view = await pool.take(shape, params.labels) if policy == VmNetworkPolicy() else None
        if view is not None:
            log.info(
                "VM %s: from the warm pool (%s) in %.1f ms",
                view.record.id,
                shape.name,
                (time.monotonic() - started) * 1000,
            )
            return view
        template = pool.template(shape)
        if template is None:
            return None
        request = VmRequest(
            backend=kind,
            vcpus=shape.vcpus,
            memory_mib=shape.memory_mib,
            labels=dict(params.labels),
            snapshot=template.directory.name,
            shares_ram=True,
            network_policy=policy,
            lifetime=lifetime,
        )
        self._admit(shape.memory_mib, clone=True)
        nvm = self.node.reserve(request)
        view = await self.node.boot(nvm, request, template)
        log.info("VM %s: pool %s empty, restored from its template", view.record.id, shape.name)
        return view

    def _pool_fits(self, shape: PoolShape) -> bool:
        """May the pool hold one more VM of ``shape``? (The template's cold VM is admitted as one too.)"""
        try:
            self._admit(shape.memory_mib, clone=True, evict=False)
        except errors.ResourceExhausted:
            return False
        return True

    async def _create_from_snapshot(self, params: CreateParams, name: str) -> VmView:
        validate.snapshot_name(name)
        if params.ip_address:
            validate.ip_address(params.ip_address)
            if self.node.network is None:
                raise errors.InvalidArgument("this server runs without networking (--no-network)")
        validate.labels(params.labels)
        policy = self._network_policy(params)
        lifetime = self._lifetime(params)
        info = self.node.snapshots.info(name)  # NOT_FOUND, or FAILED_PRECONDITION for a broken manifest
        for what, asked, recorded in (
            ("vcpus", params.vcpus, info.vcpus),
            ("memory_mib", params.memory_mib, info.memory_mib),
            ("disk_mib", params.disk_mib, info.disk_mib),
            ("backend", params.backend, info.backend),
        ):
            if asked and asked != recorded:
                raise errors.InvalidArgument(
                    f"{what} {asked} differs from snapshot {name}'s {recorded}: leave it unset to restore"
                )
        self.node.backends.get(info.backend)  # UNAVAILABLE now, before anything is reserved
        request = VmRequest(
            backend=info.backend,
            vcpus=info.vcpus,
            memory_mib=info.memory_mib,
            disk_mib=info.disk_mib,
            labels=dict(params.labels),
            ip_address=params.ip_address or None,
            allow_peers=params.allow_peers,
            snapshot=name,
            network_policy=policy,
            lifetime=lifetime,
            # Its clones map the memory file copy-on-write; a snapshot of a clone streams its RAM.
            shares_ram=info.manifest.backend_options.get("ram") == "file",
        )
        self._admit(info.memory_mib, clone=request.shares_ram)
        nvm = self.node.reserve(request)
        return self._started(await self.node.boot(nvm, request), params)

    def _network_policy(self, params: CreateParams) -> VmNetworkPolicy:
        policy = validate.network_policy(
            params.allow_out, params.deny_out, params.no_internet, params.publish
        )
        if policy != VmNetworkPolicy() and self.node.network is None:
            raise errors.InvalidArgument("this server runs without networking: no egress policy or ports")
        return policy

    async def set_egress(
        self, vm_id: str, allow_out: tuple[str, ...], deny_out: tuple[str, ...], no_internet: bool
    ) -> VmView:
        validate.vm_id(vm_id)
        policy = validate.network_policy(allow_out, deny_out, no_internet)
        return await self.node.set_egress(vm_id, policy.egress)

    def _admit(self, memory_mib: int, *, count: int = 1, clone: bool = False, evict: bool = True) -> None:
        """``count`` VMs of ``memory_mib`` fit, each a clone sharing a memory file or not. A user's VM
        that does not fit evicts ready warm pool VMs first (``evict``): the pool never starves a user."""
        total = validation.host_total_mib()
        if total is None:
            return  # no /proc/meminfo: nothing to check against
        while True:
            host = admission.HostMemory(total, validation.host_available_mib())
            try:
                admission.check(
                    memory_mib,
                    self.node.committed_memory(),
                    host,
                    overcommit=self.memory_overcommit,
                    count=count,
                    clone=clone,
                    committed_clones=self.node.committed_clones(),
                )
                return
            except errors.ResourceExhausted:
                if not (evict and self.pool is not None and self.pool.evict()):
                    raise

    async def get(self, vm_id: str) -> VmView:
        validate.vm_id(vm_id)
        return self.node.get(vm_id).view()

    async def list_page(
        self, page_size: int, page_token: str, *, include_pool: bool = False
    ) -> tuple[list[VmView], str]:
        """One page of VMs in creation order and the token of the next page ('' after the last). The
        warm pool's VMs are not user VMs: shown only with ``include_pool``."""
        size = paging.page_size(page_size)
        views = [v for v in self.node.views() if include_pool or v.record.origin is not Origin.WARM]
        return paging.page(views, lambda v: (v.record.created_at, v.record.id), size, page_token)

    async def delete(self, vm_id: str) -> None:
        validate.vm_id(vm_id)
        await self.node.delete(vm_id)

    async def set_timeout(self, vm_id: str, seconds: int, on_expiry: Expiry | None = None) -> VmView:
        """The VM ends ``seconds`` from now (0: never); ``on_expiry`` None keeps what it had."""
        validate.vm_id(vm_id)
        if seconds == 0:
            return self.node.set_lifetime(vm_id, None)
        validate.vm_timeout(seconds)
        current = self.node.get(vm_id).lifetime
        if on_expiry is None:
            on_expiry = current.on_expiry if current is not None else Expiry.DELETE
        return self.node.set_lifetime(vm_id, Lifetime.from_now(seconds, on_expiry))

    async def pause(self, vm_id: str) -> VmView:
        validate.vm_id(vm_id)
        return await self.node.pause(vm_id)

    async def resume(self, vm_id: str) -> VmView:
        validate.vm_id(vm_id)
        return await self.node.resume(vm_id)

    async def fork(self, vm_id: str, count: int) -> list[VmView]:
        """``count`` running copies of a Running VM, each a new VM with its own identity. Admitted as
        clones when the source's RAM is a shared memory file (a cold-booted VM): each costs
        ``limits.CLONE_CHARGE_MIB``, not its memory plus the VMM overhead."""
        validate.vm_id(vm_id)
        if not 1 <= count <= limits.MAX_FORK_COUNT:
            raise errors.InvalidArgument(f"count {count} must be 1-{limits.MAX_FORK_COUNT}")
        source = self.node.check_fork(vm_id)
        rec = source.record
        request = VmRequest(
            backend=rec.backend,
            vcpus=rec.vcpus,
            memory_mib=rec.memory_mib,
            labels=dict(rec.labels),
            allow_peers=rec.allow_peers,
            forked_from=rec.id,
            # A copy may reach what its source may (a fork must not be a way out of --no-internet);
            # published host ports stay with the source (a host port forwards to one VM).
            network_policy=VmNetworkPolicy(egress=source.network.egress),
            # A cold VM's RAM is a shared memfd: its snapshot's memory file is shared by the clones.
            # A restored VM's RAM is private: its forks own their RAM (the snapshot streams it).
            shares_ram=rec.origin is Origin.COLD,
        )
        # Admission and reservations with no await in between (concurrent creates cannot overbook).
        self._admit(rec.memory_mib, count=count, clone=request.shares_ram)
        clones = [self.node.reserve(request) for _ in range(count)]
        return await self.node.fork(source, clones, request)

    async def snapshot(self, vm_id: str, name: str) -> SnapshotInfo:
        validate.vm_id(vm_id)
        validate.snapshot_name(name)
        return await self.node.snapshot(vm_id, name)

    async def list_snapshots(self) -> list[tuple[SnapshotInfo, list[str]]]:
        return self.node.list_snapshots()

    async def delete_snapshot(self, name: str) -> None:
        validate.snapshot_name(name)
        self.node.delete_snapshot(name)

    async def exec(self, vm_id: str, params: ExecParams) -> ExecSession:
        validate.vm_id(vm_id)
        validate.exec_request(params.argv, params.env, params.cwd, params.timeout)
        return await self.node.exec(vm_id, params)

    async def upload(self, vm_id: str, path: str, mode: int, chunks: AsyncIterator[bytes]) -> int:
        validate.vm_id(vm_id)
        validate.guest_path(path)
        return await self.node.upload(vm_id, path, mode, chunks)

    async def download(self, vm_id: str, path: str) -> DownloadHandle:
        validate.vm_id(vm_id)
        validate.guest_path(path)
        return await self.node.download(vm_id, path)

    async def logs(self, vm_id: str, tail_lines: int | None, follow: bool) -> AsyncGenerator[bytes, None]:
        """The VM's console; at most ``limits.LOGS_MAX_STREAMS`` at once (RESOURCE_EXHAUSTED)."""
        validate.vm_id(vm_id)
        if tail_lines is not None and tail_lines > limits.LOGS_TAIL_MAX_LINES:
            raise errors.InvalidArgument(f"tail_lines: at most {limits.LOGS_TAIL_MAX_LINES}")
        if self._log_streams >= limits.LOGS_MAX_STREAMS:
            raise errors.ResourceExhausted(f"too many console streams (at most {limits.LOGS_MAX_STREAMS})")
        stream = self.node.logs(vm_id, tail_lines, follow)  # NOT_FOUND before anything is counted
        return self._counted(stream)

    async def _counted(self, stream: AsyncIterator[bytes]) -> AsyncGenerator[bytes, None]:
        self._log_streams += 1
        try:
            async for data in stream:
                yield data
        finally:
            self._log_streams -= 1

    async def watch(self, since: int | None, *, follow: bool = True) -> Watcher:
        return self.node.events.watch(since, follow=follow)
