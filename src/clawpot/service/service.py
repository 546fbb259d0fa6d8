"""``Service``: what answers the API, above the node. Validation, defaults, admission, placement.

Every request is checked (``validate``: bounds from ``limits``) before anything has a side effect,
defaults come from ``limits``, a create is admitted against host memory (``admission``) and placed
on the one node there is today. The node does the work; what either raises is a ``clawpot.errors``
kind, which the gRPC servicer turns into a status code. No gRPC here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from clawpot import errors, limits
from clawpot.node.node import Node, VmRequest
from clawpot.node.sessions import DownloadHandle, ExecParams, ExecSession
from clawpot.node.snapshots import SnapshotInfo
from clawpot.node.vms import VmView
from clawpot.service import admission, paging, validate
from clawpot.vm import validation
from clawpot.vmm.spec import BackendKind


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


class Service:
    def __init__(self, node: Node, *, memory_overcommit: float = limits.DEFAULT_MEMORY_OVERCOMMIT) -> None:
        self.node = node
        self.memory_overcommit = memory_overcommit

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
        # May wait for the auto probe started with the node; other calls are served meanwhile.
        kind = await self.node.backends.resolve(params.backend)
        self.node.backends.get(kind)  # UNAVAILABLE now, before anything is reserved
        request = VmRequest(
            backend=kind,
            vcpus=params.vcpus,
            memory_mib=params.memory_mib,
            disk_mib=params.disk_mib,
            labels=dict(params.labels),
            ip_address=params.ip_address or None,
            allow_peers=params.allow_peers,
        )
        # Admission and reservation with no await in between: concurrent creates cannot overbook.
        self._admit(params.memory_mib)
        nvm = self.node.reserve(request)
        return await self.node.boot(nvm, request)

    async def _create_from_snapshot(self, params: CreateParams, name: str) -> VmView:
        validate.snapshot_name(name)
        if params.ip_address:
            validate.ip_address(params.ip_address)
            if self.node.network is None:
                raise errors.InvalidArgument("this server runs without networking (--no-network)")
        validate.labels(params.labels)
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
        )
        self._admit(info.memory_mib)
        nvm = self.node.reserve(request)
        return await self.node.boot(nvm, request)

    def _admit(self, memory_mib: int) -> None:
        total = validation.host_total_mib()
        if total is None:
            return  # no /proc/meminfo: nothing to check against
        host = admission.HostMemory(total, validation.host_available_mib())
        admission.check(memory_mib, self.node.committed_memory(), host, overcommit=self.memory_overcommit)

    async def get(self, vm_id: str) -> VmView:
        validate.vm_id(vm_id)
        return self.node.get(vm_id).view()

    async def list_page(self, page_size: int, page_token: str) -> tuple[list[VmView], str]:
        """One page of VMs in creation order and the token of the next page ('' after the last)."""
        size = paging.page_size(page_size)
        views = self.node.views()
        return paging.page(views, lambda v: (v.record.created_at, v.record.id), size, page_token)

    async def delete(self, vm_id: str) -> None:
        validate.vm_id(vm_id)
        await self.node.delete(vm_id)

    async def pause(self, vm_id: str) -> VmView:
        validate.vm_id(vm_id)
        return await self.node.pause(vm_id)

    async def resume(self, vm_id: str) -> VmView:
        validate.vm_id(vm_id)
        return await self.node.resume(vm_id)

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
