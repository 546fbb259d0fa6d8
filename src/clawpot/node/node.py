"""``Node``: what one host runs. A plain async Python interface, no gRPC: the service drives it today,
a control plane could drive one per host later.

It owns the store, the network, the backends, one ``NodeVm`` per VM (handle + agent link), the
health checks and reconcile at start. It does not validate requests nor decide defaults or admission
(``clawpot.service`` does, before calling it); what it raises are the kinds of ``clawpot.errors``.

Persistence rules: a VM's row is written (state Starting) before anything is created for it
(``reserve``), and is deleted only after everything it held is released, so a crash at any point
leaves a row or a directory that ``reconcile`` at the next start can act on. A create that fails
cleans up after itself and leaves no row.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from clawpot import errors, limits, paths
from clawpot.network import NetworkConfig, NetworkError, NetworkManager
from clawpot.node import calls, reconcile
from clawpot.node.backends import Backends
from clawpot.node.datadir import Assets, NodeError, lock_data_dir
from clawpot.node.health import AgentHealth
from clawpot.node.launch import LaunchParams, launch, restore
from clawpot.node.resources import release
from clawpot.node.sessions import DownloadHandle, ExecParams, ExecSession
from clawpot.node.snapshots import SnapshotCatalog, SnapshotInfo
from clawpot.node.store import Origin, Store, VmRecord
from clawpot.node.tasks import to_completion
from clawpot.node.vms import NodeVm, VmView
from clawpot.vm.directory import new_vm_id
from clawpot.vm.errors import VmNotRunning
from clawpot.vm.handle import Vm
from clawpot.vm.state import Transition, VmState
from clawpot.vmm.account import VmmAccount, vmm_account
from clawpot.vmm.base import Feature, VmmBackend, VmmConfigError, VmmError, VmmProcess, VmmUnsupported
from clawpot.vmm.spec import BackendKind

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeConfig:
    data_dir: Path
    # None: auto (Firecracker where KVM boots guests, else QEMU), probed when the node opens.
    default_backend: BackendKind | None = None
    # None: VMs get no network interface and the host's network is left alone.
    bridge: str | None = limits.DEFAULT_BRIDGE
    subnet: str = limits.DEFAULT_SUBNET
    ready_timeout: float = limits.DEFAULT_READY_TIMEOUT
    stop_grace: float = limits.DEFAULT_STOP_GRACE
    # How long the agent of a Running VM has to answer before an operation fails with UNAVAILABLE.
    agent_timeout: float = limits.DEFAULT_AGENT_TIMEOUT
    health_interval: float = limits.HEALTH_CHECK_INTERVAL
    # Firecracker under its jailer; False is `clawpot-server --no-jailer` (development only).
    use_jailer: bool = True


@dataclass(frozen=True)
class VmRequest:
    """A create the service has validated and admitted: what the node needs to boot it."""

    backend: BackendKind
    vcpus: int
    memory_mib: int
    disk_mib: int = limits.DEFAULT_DISK_MIB
    labels: dict[str, str] = field(default_factory=dict)
    ip_address: str | None = None
    allow_peers: bool = False
    # Restore this snapshot (by name) instead of booting; vcpus and memory are then the snapshot's.
    snapshot: str | None = None


class Node:
    def __init__(
        self, config: NodeConfig, store: Store, network: NetworkManager | None, lock: IO[str]
    ) -> None:
        self.config = config
        self.store = store
        self.network = network
        self.assets = Assets.of(config.data_dir)
        self.backends = Backends(
            config.data_dir, self.assets, config.default_backend, use_jailer=config.use_jailer
        )
        self.vms_root = paths.vms_dir(config.data_dir)
        self.snapshots = SnapshotCatalog(paths.snapshots_dir(config.data_dir))
        self._snapshots_in_progress: set[str] = set()
        self.vms: dict[str, NodeVm] = {}
        self._lock_file = lock
        self._health_loop: asyncio.Task[None] | None = None

    # -- start and stop -------------------------------------------------------------------------------

    @classmethod
    async def open(cls, config: NodeConfig) -> Node:
        config.data_dir.mkdir(parents=True, exist_ok=True)
        lock = lock_data_dir(config.data_dir)
        try:
            Assets.of(config.data_dir).check()
            store = Store(paths.state_db(config.data_dir))
            network = None
            if config.bridge is not None:
                try:
                    owner = _tap_owner()
                    net_config = NetworkConfig.build(
                        bridge=config.bridge,
                        subnet=config.subnet,
                        tap_uid=owner.uid if owner else None,
                        tap_gid=owner.gid if owner else None,
                    )
                    network = NetworkManager(store.path, net_config)
                except NetworkError as exc:
                    raise NodeError(str(exc)) from exc
            node = cls(config, store, network, lock)
            node.backends.start_probe()  # off the calls' path: creates that need it await it
            node.snapshots.sweep()
            await reconcile.reconcile(node)
            node._health_loop = asyncio.create_task(node._check_health_loop(), name="agent health")
            return node
        except BaseException:
            lock.close()
            raise

    async def close(self, *, stop_vms: bool) -> None:
        if self._health_loop is not None:
            self._health_loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_loop
        for nvm in list(self.vms.values()):
            if nvm.health_task is not None:
                nvm.health_task.cancel()
                await asyncio.gather(nvm.health_task, return_exceptions=True)
            if nvm.create_task is not None and not nvm.create_task.done():
                nvm.create_task.cancel()
                with contextlib.suppress(BaseException):
                    await nvm.create_task
        if stop_vms:
            await asyncio.gather(*(self.delete(vm_id) for vm_id in list(self.vms)), return_exceptions=True)
        for nvm in self.vms.values():
            await nvm.agent.close()
            if nvm.vm is not None:
                nvm.vm.detach()  # the VMM keeps running; the next node attaches it
        await self.backends.close()
        if self.network is not None and not self.vms:
            with contextlib.suppress(NetworkError):
                await asyncio.to_thread(self.network.teardown)
        self.store.close()
        self._lock_file.close()

    # -- queries --------------------------------------------------------------------------------------

    def get(self, vm_id: str) -> NodeVm:
        nvm = self.vms.get(vm_id)
        if nvm is None:
            raise errors.NotFound(f"VM {vm_id} not found")
        return nvm

    def views(self) -> list[VmView]:
        return [nvm.view() for nvm in self.vms.values()]

    def committed_memory(self) -> list[int]:
        """Guest memory of every VM that holds host memory now (admission counts these)."""
        return [nvm.record.memory_mib for nvm in self.vms.values() if nvm.holds_memory]

    # -- create ---------------------------------------------------------------------------------------

    def reserve(self, request: VmRequest) -> NodeVm:
        """Record a new VM (Starting) and count it: synchronous, so the caller's admission check and
        this reservation are one step for the event loop (concurrent creates cannot overbook)."""
        vm_id = new_vm_id()
        record = VmRecord(
            id=vm_id,
            state=VmState.STARTING,
            backend=request.backend,
            vcpus=request.vcpus,
            memory_mib=request.memory_mib,
            disk_mib=request.disk_mib,
            vm_dir=self.vms_root / vm_id,
            labels=dict(request.labels),
            allow_peers=request.allow_peers,
            origin=Origin.RESTORE if request.snapshot else Origin.COLD,
            snapshot=request.snapshot or "",
        )
        self.store.insert(record)
        nvm = NodeVm(record, self.config.agent_timeout)
        self.vms[vm_id] = nvm
        return nvm

    async def boot(self, nvm: NodeVm, request: VmRequest) -> VmView:
        """Boot a reserved VM; returns it Running. On any failure (a cancelled caller included)
        everything it took is released and its row is gone."""
        backend = self.backends.get(request.backend)
        params = LaunchParams(
            assets=self.assets,
            vms_root=self.vms_root,
            ready_timeout=self.config.ready_timeout,
            stop_grace=self.config.stop_grace,
            ip_address=request.ip_address,
            allow_peers=request.allow_peers,
        )
        nvm.create_task = asyncio.create_task(self._boot(nvm, backend, params), name=f"create {nvm.id}")
        try:
            # Shielded, so that a cancelled caller reaches the boot only through the path below.
            record = await asyncio.shield(nvm.create_task)
            return VmView(record, nvm.agent.health)
        except asyncio.CancelledError:
            # The caller was cancelled (client gone, or the server stopping): stop the boot and let its
            # own error path undo everything, so no half-made VM is left.
            if not nvm.create_task.done():
                nvm.create_task.cancel()
            with contextlib.suppress(BaseException):
                await to_completion(nvm.create_task)
            raise

    async def _boot(self, nvm: NodeVm, backend: VmmBackend, params: LaunchParams) -> VmRecord:
        try:
            if nvm.record.origin is Origin.RESTORE:
                info = self.snapshots.info(nvm.record.snapshot)
                directory = self.snapshots.path(info.name)
                return await restore(
                    nvm,
                    backend,
                    params,
                    self.network,
                    self.store,
                    self._on_transition,
                    directory,
                    info.manifest,
                )
            return await launch(nvm, backend, params, self.network, self.store, self._on_transition)
        except BaseException as exc:
            if not nvm.deleting:
                await to_completion(self._discard(nvm))
            if nvm.deleting and not isinstance(exc, errors.ServerError):
                raise errors.FailedPrecondition(
                    f"VM {nvm.id} was deleted while it was being created"
                ) from exc
            raise

    async def _discard(self, nvm: NodeVm) -> None:
        """Undo a create completely: VMM, directory, TAP, address, row."""
        if nvm.vm is not None:
            with contextlib.suppress(Exception):
                await nvm.vm.stop()
        await release(self.network, nvm.record)
        self.store.delete(nvm.id)
        self.vms.pop(nvm.id, None)

    # -- a VM's life after its boot -------------------------------------------------------------------

    def _on_transition(self, nvm: NodeVm, event: Transition) -> None:
        """The handle went to Error (its VMM exited unasked): record it, free what the VM held."""
        if event.target is VmState.ERROR and nvm.record.state is not VmState.STARTING and not nvm.deleting:
            nvm.record = nvm.record.with_(state=VmState.ERROR, error=event.reason, pid=None, ip_address="")
            nvm.agent.mark(AgentHealth.UNKNOWN, "the VM is not running")
            self.store.update(nvm.record)
            asyncio.get_running_loop().create_task(self._release_after_crash(nvm))

    async def _release_after_crash(self, nvm: NodeVm) -> None:
        await nvm.agent.close()
        if nvm.vm is not None:
            with contextlib.suppress(Exception):
                await nvm.vm.stop()
        await release(self.network, nvm.record)

    # -- delete ---------------------------------------------------------------------------------------

    async def delete(self, vm_id: str) -> None:
        """Stop the VM and free everything it held. A second delete of the same VM waits for the first.

        The work runs in its own task: a caller that goes away does not leave the VM half-deleted.
        """
        nvm = self.get(vm_id)
        if nvm.delete_task is None:
            nvm.delete_task = asyncio.create_task(self._delete(nvm), name=f"delete {vm_id}")
        task = nvm.delete_task
        try:
            await asyncio.shield(task)
        except Exception:
            if nvm.delete_task is task:
                nvm.delete_task = None  # let a later delete try again
            raise

    async def _delete(self, nvm: NodeVm) -> None:
        nvm.deleting = True
        nvm.record = nvm.record.with_(state=VmState.STOPPING)
        nvm.agent.mark(AgentHealth.UNKNOWN, "the VM is being deleted")
        if nvm.health_task is not None:
            nvm.health_task.cancel()
        with contextlib.suppress(Exception):
            self.store.update(nvm.record)
        if nvm.create_task is not None and not nvm.create_task.done():
            nvm.create_task.cancel()
            with contextlib.suppress(BaseException):
                await nvm.create_task
        if nvm.vm is not None:
            # A clean guest shutdown through the agent keeps the writable layer consistent; the VMM is
            # stopped after it. Same path for a VM booted here and one attached after a restart.
            nvm.vm.agent = nvm.agent.client
            with contextlib.suppress(Exception):
                await nvm.vm.stop()
        await nvm.agent.close()
        await release(self.network, nvm.record)
        self.store.delete(nvm.id)
        self.vms.pop(nvm.id, None)

    # -- operations a backend may offer ---------------------------------------------------------------

    # The backend's capability is checked first: what it cannot do is FAILED_PRECONDITION at once,
    # with nothing changed. A paused VM keeps its VMM, address and TAP; only its vCPUs stop.

    async def pause(self, vm_id: str) -> VmView:
        """Running → Paused, recorded in the store (a paused VM survives a server restart, paused)."""
        nvm = self.get(vm_id)
        self._require(nvm, Feature.PAUSE, "pause")
        async with nvm.operation:
            self._in_state(nvm, "pause", VmState.RUNNING)
            if nvm.health_task is not None:
                nvm.health_task.cancel()  # a ping in flight would only time out against stopped vCPUs
            await self._vmm_operation(nvm, Vm.pause)
            self._record_state(nvm, VmState.PAUSED)
            nvm.agent.mark(AgentHealth.UNKNOWN, "the VM is paused")
        return nvm.view()

    async def resume(self, vm_id: str) -> VmView:
        """Paused → Running, recorded in the store; the next health check asks its agent again."""
        nvm = self.get(vm_id)
        self._require(nvm, Feature.PAUSE, "pause")
        async with nvm.operation:
            self._in_state(nvm, "resume", VmState.PAUSED)
            await self._vmm_operation(nvm, Vm.resume)
            self._record_state(nvm, VmState.RUNNING)
        return nvm.view()

    async def snapshot(self, vm_id: str, name: str) -> SnapshotInfo:
        """A named snapshot of a Running or Paused VM (memory, device state, writable layer), taken while
        it is paused; a VM that was Running runs again afterwards, whatever happened. On failure nothing
        is left under the name (``clawpot.vmm.snapshot`` writes atomically)."""
        nvm = self.get(vm_id)
        self._require(nvm, Feature.SNAPSHOT, "snapshot")
        self._in_state(nvm, "snapshot", VmState.RUNNING, VmState.PAUSED)
        if self.snapshots.exists(name) or name in self._snapshots_in_progress:
            raise errors.AlreadyExists(f"snapshot {name} already exists")
        self._snapshots_in_progress.add(name)
        try:
            async with nvm.operation:
                self._in_state(nvm, "snapshot", VmState.RUNNING, VmState.PAUSED)
                assert nvm.vm is not None
                vm = nvm.vm
                if vm.vmm is None or type(vm.vmm).snapshot is VmmProcess.snapshot:
                    # A VMM adopted after a restart: its VM spec is not known here (before any pause).
                    raise errors.FailedPrecondition(f"VM {vm_id}: its VMM process cannot take snapshots")
                was_running = nvm.record.state is VmState.RUNNING
                if was_running:
                    if nvm.health_task is not None:
                        nvm.health_task.cancel()
                    await self._vmm_operation(nvm, Vm.pause)
                try:
                    await vm.snapshot(self.snapshots.path(name))
                except (VmmUnsupported, VmNotRunning) as exc:
                    raise errors.FailedPrecondition(f"VM {vm_id}: {exc}") from exc
                except VmmError as exc:
                    raise _snapshot_failed(vm_id, exc) from exc
                finally:
                    if was_running and vm.state is VmState.PAUSED:
                        await vm.resume()
        finally:
            self._snapshots_in_progress.discard(name)
        log.info("VM %s: snapshot %s taken", vm_id, name)
        return self.snapshots.info(name)

    def list_snapshots(self) -> list[tuple[SnapshotInfo, list[str]]]:
        """Every snapshot with the VMs restored from it that still hold resources."""
        return [(info, self.snapshot_users(info.name)) for info in self.snapshots.list()]

    def snapshot_users(self, name: str) -> list[str]:
        return [
            nvm.id
            for nvm in self.vms.values()
            if nvm.record.origin is Origin.RESTORE and nvm.record.snapshot == name and nvm.holds_memory
        ]

    def delete_snapshot(self, name: str) -> None:
        """Refused while a VM restored from it still runs (its memory maps the snapshot's file)."""
        if not self.snapshots.exists(name):
            raise errors.NotFound(f"snapshot {name} not found")
        users = self.snapshot_users(name)
        if users:
            raise errors.FailedPrecondition(
                f"snapshot {name} is in use by VM {', '.join(users[:5])}"
                f"{' and others' if len(users) > 5 else ''}: delete them first"
            )
        self.snapshots.remove(name)
        log.info("snapshot %s deleted", name)

    @staticmethod
    def _require(nvm: NodeVm, feature: Feature, action: str) -> None:
        """The backend's capability, checked before anything else: a backend without it changes nothing."""
        if nvm.vm is None:
            return  # no VMM (Error, or not booted yet): the state check says why not
        try:
            nvm.vm.backend.capabilities().require(feature, action)
        except VmmUnsupported as exc:
            raise errors.FailedPrecondition(f"VM {nvm.id}: {exc}") from exc

    @staticmethod
    def _in_state(nvm: NodeVm, action: str, *states: VmState) -> None:
        current = VmState.STOPPING if nvm.deleting else nvm.record.state
        if current not in states:
            wanted = " or ".join(states)
            raise errors.FailedPrecondition(f"cannot {action} VM {nvm.id}: it is {current}, not {wanted}")

    def _record_state(self, nvm: NodeVm, state: VmState) -> None:
        if nvm.deleting or nvm.record.state is VmState.ERROR:
            return  # a delete or a crash got there while the VMM was asked: theirs is the newer state
        nvm.record = nvm.record.with_(state=state)
        self.store.update(nvm.record)

    async def _vmm_operation(self, nvm: NodeVm, operation: Callable[[Vm], Awaitable[None]]) -> None:
        if nvm.vm is None:
            raise errors.FailedPrecondition(f"VM {nvm.id} has no VMM handle")
        try:
            await operation(nvm.vm)
        except (VmmUnsupported, VmNotRunning) as exc:
            raise errors.FailedPrecondition(f"VM {nvm.id}: {exc}") from exc

    # -- agent health -------------------------------------------------------------------------------

    async def _check_health_loop(self) -> None:
        """Every ``health_interval`` seconds, one ping per Running VM; never two in flight for one VM."""
        while True:
            await asyncio.sleep(self.config.health_interval)
            for nvm in list(self.vms.values()):
                if nvm.record.state is not VmState.RUNNING or nvm.deleting:
                    continue
                if nvm.health_task is not None and not nvm.health_task.done():
                    continue  # the last check has not come back (it is bounded: it will)
                nvm.health_task = asyncio.create_task(self._check(nvm), name=f"health {nvm.id}")

    @staticmethod
    async def _check(nvm: NodeVm) -> None:
        try:
            await nvm.agent.check()
        except Exception:  # a bug must not kill the checks of this VM for good
            log.exception("VM %s: health check failed", nvm.id)

    # -- guest operations -----------------------------------------------------------------------------

    def running(self, vm_id: str) -> NodeVm:
        nvm = self.get(vm_id)
        if nvm.record.state is VmState.PAUSED and not nvm.deleting:
            # Its agent cannot answer: say so at once rather than time out against stopped vCPUs.
            raise errors.FailedPrecondition(f"VM {vm_id} is paused")
        if nvm.record.state is not VmState.RUNNING or nvm.deleting:
            state = VmState.STOPPING if nvm.deleting else nvm.record.state
            raise errors.FailedPrecondition(f"VM {vm_id} is {state}, not Running")
        return nvm

    async def exec(self, vm_id: str, params: ExecParams) -> ExecSession:
        return await calls.exec_in(self.running(vm_id), params)

    async def upload(self, vm_id: str, path: str, mode: int, chunks: AsyncIterator[bytes]) -> int:
        return await calls.upload_to(self.running(vm_id), path, mode, chunks)

    async def download(self, vm_id: str, path: str) -> DownloadHandle:
        return await calls.download_from(self.running(vm_id), path)


def _snapshot_failed(vm_id: str, exc: VmmError) -> errors.ServerError:
    """A full disk is RESOURCE_EXHAUSTED (the host's, not the request's fault); anything else is
    UNAVAILABLE. Either way the VM was left as it was and no snapshot exists under the name."""
    cause = exc.__cause__
    if (isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT)) or "No space" in str(exc):
        return errors.ResourceExhausted(f"snapshot of VM {vm_id} failed: {errors.one_line(str(exc))}")
    return errors.Unavailable(f"snapshot of VM {vm_id} failed: {errors.one_line(str(exc))}")


def _tap_owner() -> VmmAccount | None:
    """Who owns the VMs' TAPs: the unprivileged VMM account (a jailed firecracker opens its TAP as that
    user; a VMM running as root opens any). None where the account does not exist: a backend that
    needs it says so when it is asked for."""
    try:
        return vmm_account()
    except VmmConfigError:
        return None
