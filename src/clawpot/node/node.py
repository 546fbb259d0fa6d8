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
import secrets
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from clawpot import errors, limits, paths
from clawpot.agent_client import GuestError
from clawpot.metrics import instruments
from clawpot.network import NetworkConfig, NetworkError, NetworkManager
from clawpot.network.dnsforward import DnsForwarder, Upstream, system_upstreams
from clawpot.network.policy import EgressPolicy
from clawpot.network.policydb import VmNetworkPolicy
from clawpot.node import calls, console, reconcile
from clawpot.node.agents import one_line
from clawpot.node.backends import Backends
from clawpot.node.datadir import Assets, NodeError, lock_data_dir
from clawpot.node.events import EventKind, EventLog
from clawpot.node.health import AgentHealth
from clawpot.node.launch import LaunchParams, launch, restore
from clawpot.node.lifetimes import Expiry, Lifetime, Reaper
from clawpot.node.resources import release, release_network
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
from clawpot.vmm.snapshot import Manifest, read_manifest
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
    # Where the gateway's DNS forwarder sends guests' queries; empty: the host's /etc/resolv.conf.
    dns_upstreams: tuple[Upstream, ...] = ()
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
    # Egress policy and published ports (validated by the service).
    network_policy: VmNetworkPolicy = field(default_factory=VmNetworkPolicy)
    # When the VM ends (stored with its row); None: it lives until deleted.
    lifetime: Lifetime | None = None
    # A fork of this VM (``Node.fork``): restored from a hidden snapshot of it.
    forked_from: str | None = None
    # Its RAM will map a snapshot's memory file copy-on-write: admission charges it as a clone.
    shares_ram: bool = False
    # A VM of the warm pool of this shape (``1x256``): not a user VM until it is handed out.
    pool_shape: str | None = None

    @property
    def origin(self) -> Origin:
        if self.pool_shape:
            return Origin.WARM
        return Origin.FORK if self.forked_from else Origin.RESTORE if self.snapshot else Origin.COLD


@dataclass(frozen=True)
class RestoreSource:
    """A snapshot directory to restore, with its manifest (a named snapshot or a hidden template)."""

    directory: Path
    manifest: Manifest


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
        self.dns: DnsForwarder | None = None
        self.reaper = Reaper(self.vms, self._expire)
        # Every state change, numbered, for WatchVms (``events``); set when the node closes, so
        # following log streams end too.
        self.events = EventLog()
        self.closing = asyncio.Event()

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
            await node._start_dns()
            for vm_id, lifetime in store.lifetimes().items():
                if vm_id in node.vms:
                    node.vms[vm_id].lifetime = lifetime
            node.reaper.start()  # a deadline that passed while the server was down acts at once
            node._health_loop = asyncio.create_task(node._check_health_loop(), name="agent health")
            return node
        except BaseException:
            lock.close()
            raise

    def end_streams(self) -> None:
        """End the streams clients hold open (event watchers, followed consoles): the server is
        stopping, and they would otherwise hold its graceful shutdown for the whole grace period."""
        self.closing.set()
        self.events.close()

    async def close(self, *, stop_vms: bool) -> None:
        await self.reaper.stop()
        self.end_streams()
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
        if self.dns is not None:
            await self.dns.close()
        if self.network is not None and not self.vms:
            with contextlib.suppress(NetworkError):
                await asyncio.to_thread(self.network.teardown)
        self.store.close()
        self._lock_file.close()

    async def _start_dns(self) -> None:
        """The gateway's DNS forwarder (network/dnsforward.py), once the bridge has its address."""
        network = self.network
        if network is None:
            return
        gateway = str(network.config.gateway)
        upstreams = self.config.dns_upstreams or tuple(system_upstreams(exclude=gateway))
        if not upstreams:
            log.warning("no DNS upstream (none in /etc/resolv.conf, no --dns-upstream): guests get SERVFAIL")

        async def pin(vm_id: str, qname: str, addresses: list[str], ttl: int) -> None:
            await asyncio.to_thread(network.pin, vm_id, qname, addresses, ttl)

        forwarder = DnsForwarder(gateway, upstreams, network.vm_at, pin)
        try:
            await forwarder.start()
        except OSError as exc:
            raise NodeError(f"cannot serve guests' DNS on {gateway}:53: {exc.strerror or exc}") from exc
        self.dns = forwarder
        log.info("DNS forwarder on %s:53 -> %s", gateway, ", ".join(f"{u.host}:{u.port}" for u in upstreams))

    # -- queries --------------------------------------------------------------------------------------

    def get(self, vm_id: str, *, warm: bool = False) -> NodeVm:
        """A user VM; a warm pool VM only with ``warm`` (for the pool itself: users never see them)."""
        nvm = self.vms.get(vm_id)
        if nvm is None or (nvm.record.origin is Origin.WARM and not warm):
            raise errors.NotFound(f"VM {vm_id} not found")
        return nvm

    def views(self) -> list[VmView]:
        return [nvm.view() for nvm in self.vms.values()]

    def committed_memory(self) -> list[int]:
        """Guest memory of every VM that holds host memory now, clones excepted (admission counts
        these; ``committed_clones`` counts the others)."""
        return [nvm.record.memory_mib for nvm in self.vms.values() if nvm.holds_memory and not nvm.shares_ram]

    def committed_clones(self) -> int:
        """How many VMs holding memory map a snapshot's memory file (charged as clones). Known for VMs
        made by this server only: one adopted after a restart is charged in full (conservative)."""
        return sum(1 for nvm in self.vms.values() if nvm.holds_memory and nvm.shares_ram)

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
            origin=request.origin,
            snapshot=request.pool_shape or request.forked_from or request.snapshot or "",
        )
        self.store.insert(record, request.lifetime)
        nvm = NodeVm(record, self.config.agent_timeout)
        nvm.network = request.network_policy
        nvm.lifetime = request.lifetime
        nvm.shares_ram = request.shares_ram
        self.vms[vm_id] = nvm
        self.reaper.changed()
        self.events.emit(record, EventKind.CREATED)
        return nvm

    async def boot(self, nvm: NodeVm, request: VmRequest, source: RestoreSource | None = None) -> VmView:
        """Boot a reserved VM (or restore it from ``source``); returns it Running. On any failure (a
        cancelled caller included) everything it took is released and its row is gone."""
        backend = self.backends.get(request.backend)
        params = LaunchParams(
            assets=self.assets,
            vms_root=self.vms_root,
            ready_timeout=self.config.ready_timeout,
            stop_grace=self.config.stop_grace,
            ip_address=request.ip_address,
            allow_peers=request.allow_peers,
            policy=request.network_policy,
        )
        started = time.monotonic()
        nvm.create_task = asyncio.create_task(
            self._boot(nvm, backend, params, source), name=f"create {nvm.id}"
        )
        try:
            # Shielded, so that a cancelled caller reaches the boot only through the path below.
            record = await asyncio.shield(nvm.create_task)
            instruments.CREATE_SECONDS.labels(origin=record.origin.value).observe(time.monotonic() - started)
            return VmView(record, nvm.agent.health, nvm.network, nvm.lifetime)
        except asyncio.CancelledError:
            # The caller was cancelled (client gone, or the server stopping): stop the boot and let its
            # own error path undo everything, so no half-made VM is left.
            if not nvm.create_task.done():
                nvm.create_task.cancel()
            with contextlib.suppress(BaseException):
                await to_completion(nvm.create_task)
            raise

    async def _boot(
        self, nvm: NodeVm, backend: VmmBackend, params: LaunchParams, source: RestoreSource | None
    ) -> VmRecord:
        try:
            if source is None and nvm.record.origin is Origin.RESTORE:
                info = self.snapshots.info(nvm.record.snapshot)
                source = RestoreSource(self.snapshots.path(info.name), info.manifest)
            if source is not None:
                record = await restore(
                    nvm,
                    backend,
                    params,
                    self.network,
                    self.store,
                    self._on_transition,
                    source.directory,
                    source.manifest,
                )
            else:
                record = await launch(nvm, backend, params, self.network, self.store, self._on_transition)
        except BaseException as exc:
            if not nvm.deleting:
                reason = "cancelled" if isinstance(exc, asyncio.CancelledError) else str(exc)
                self.events.emit(nvm.record, EventKind.ERROR, reason or type(exc).__name__, VmState.ERROR)
                await to_completion(self._discard(nvm))
            if nvm.deleting and not isinstance(exc, errors.ServerError):
                raise errors.FailedPrecondition(
                    f"VM {nvm.id} was deleted while it was being created"
                ) from exc
            raise
        self.events.emit(record, EventKind.RUNNING)
        return record

    async def _discard(self, nvm: NodeVm) -> None:
        """Undo a create completely: VMM, directory, TAP, address, row."""
        if nvm.vm is not None:
            with contextlib.suppress(Exception):
                await nvm.vm.stop()
        await release(self.network, nvm.record)
        self.store.delete(nvm.id)
        self.vms.pop(nvm.id, None)
        self.events.emit(nvm.record, EventKind.DELETED, state=VmState.STOPPED)

    # -- a VM's life after its boot -------------------------------------------------------------------

    def _on_transition(self, nvm: NodeVm, event: Transition) -> None:
        """The handle went to Error (its VMM exited unasked): record it, free what the VM held."""
        if event.target is VmState.ERROR and nvm.record.state is not VmState.STARTING and not nvm.deleting:
            nvm.record = nvm.record.with_(state=VmState.ERROR, error=event.reason, pid=None, ip_address="")
            nvm.agent.mark(AgentHealth.UNKNOWN, "the VM is not running")
            self.store.update(nvm.record)
            self.events.emit(nvm.record, EventKind.ERROR, event.reason)
            nvm.release_task = asyncio.get_running_loop().create_task(self._release_after_crash(nvm))

    async def _release_after_crash(self, nvm: NodeVm) -> None:
        """Free what a dead VM held, except its console: kept until the VM is deleted, for `logs`."""
        await nvm.agent.close()
        path = self.console_path(nvm)
        await asyncio.to_thread(console.set_aside, path)  # the VMM's cleanup removes its console
        if nvm.vm is not None:
            with contextlib.suppress(Exception):
                await nvm.vm.stop()
        await release_network(self.network, nvm.record)
        await asyncio.to_thread(console.keep_only_console, path)

    def console_path(self, nvm: NodeVm) -> Path:
        """The VM's current console file (``clawpot.node.console`` reads it, with its predecessor)."""
        return console.console_log(nvm.record.vm_dir, nvm.record.backend)

    def more_output_may_come(self, vm_id: str) -> bool:
        """Whether the VM can still print: it exists, is not being deleted, and its VMM runs or is
        starting (a VM in Error printed its last words before it got there)."""
        nvm = self.vms.get(vm_id)
        if nvm is None or nvm.deleting:
            return False
        return nvm.record.state in (VmState.STARTING, VmState.RUNNING, VmState.PAUSED)

    # -- lifetimes ------------------------------------------------------------------------------------

    def set_lifetime(self, vm_id: str, lifetime: Lifetime | None) -> VmView:
        """Set (or with None remove) when the VM ends; stored first, then the reaper is told."""
        nvm = self.get(vm_id)
        if nvm.deleting:
            raise errors.FailedPrecondition(f"VM {vm_id} is being deleted")
        self.store.set_lifetime(vm_id, lifetime)
        nvm.lifetime = lifetime
        self.reaper.changed()
        return nvm.view()

    async def _expire(self, nvm: NodeVm) -> None:
        """The reaper's action for a VM whose lifetime passed: pause a Running VM whose lifetime says
        so (E2B's autoPause) and drop its deadline; delete it otherwise."""
        lifetime = nvm.lifetime
        if lifetime is None or self.vms.get(nvm.id) is not nvm:
            return
        if lifetime.on_expiry is Expiry.PAUSE and nvm.record.state is VmState.PAUSED:
            self.set_lifetime(nvm.id, None)  # already paused: nothing left to end
            return
        if lifetime.on_expiry is Expiry.PAUSE and nvm.record.state is VmState.RUNNING:
            try:
                await self.pause(nvm.id)
                self.set_lifetime(nvm.id, None)
                return
            except errors.FailedPrecondition as exc:  # backend without pause, or not Running any more
                log.info("VM %s: cannot pause at the end of its lifetime (%s); deleting it", nvm.id, exc)
        await self.delete(nvm.id)

    # -- delete ---------------------------------------------------------------------------------------

    async def delete(self, vm_id: str, *, warm: bool = False) -> None:
        """Stop the VM and free everything it held. A second delete of the same VM waits for the first.

        The work runs in its own task: a caller that goes away does not leave the VM half-deleted.
        """
        nvm = self.get(vm_id, warm=warm)
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
        if nvm.release_task is not None:
            # A crash's release still running: let it finish, or it would race the removal below.
            await asyncio.gather(nvm.release_task, return_exceptions=True)
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
        self.events.emit(nvm.record, EventKind.DELETED, state=VmState.STOPPED)

    # -- network policy -------------------------------------------------------------------------------

    async def set_egress(self, vm_id: str, egress: EgressPolicy) -> VmView:
        """A new egress policy for a VM that holds an address (Running or Paused): stored and applied
        to its rules at once; new connections and DNS answers follow it."""
        nvm = self.get(vm_id)
        self._in_state(nvm, "change the network policy of", VmState.RUNNING, VmState.PAUSED)
        if self.network is None:
            raise errors.FailedPrecondition("this server runs without a network (--bridge none)")
        try:
            nvm.network = await asyncio.to_thread(self.network.set_egress, vm_id, egress)
        except NetworkError as exc:
            raise errors.Unavailable(f"VM {vm_id}: cannot apply the egress policy: {exc}") from exc
        log.info("VM %s: egress policy %s", vm_id, egress.to_json())
        return nvm.view()

    # -- operations a backend may offer ---------------------------------------------------------------

    # The backend's capability is checked first: what it cannot do is FAILED_PRECONDITION at once,
    # with nothing changed. A paused VM keeps its VMM, address and TAP; only its vCPUs stop.

    async def pause(self, vm_id: str, *, warm: bool = False) -> VmView:
        """Running → Paused, recorded in the store (a paused VM survives a server restart, paused)."""
        nvm = self.get(vm_id, warm=warm)
        self._require(nvm, Feature.PAUSE, "pause")
        async with nvm.operation:
            self._in_state(nvm, "pause", VmState.RUNNING)
            if nvm.health_task is not None:
                nvm.health_task.cancel()  # a ping in flight would only time out against stopped vCPUs
            await self._vmm_operation(nvm, Vm.pause)
            if self._record_state(nvm, VmState.PAUSED):
                self.events.emit(nvm.record, EventKind.PAUSED)
            nvm.agent.mark(AgentHealth.UNKNOWN, "the VM is paused")
        return nvm.view()

    async def resume(self, vm_id: str) -> VmView:
        """Paused → Running, recorded in the store; the next health check asks its agent again."""
        nvm = self.get(vm_id)
        self._require(nvm, Feature.PAUSE, "pause")
        async with nvm.operation:
            self._in_state(nvm, "resume", VmState.PAUSED)
            await self._vmm_operation(nvm, Vm.resume)
            if self._record_state(nvm, VmState.RUNNING):
                self.events.emit(nvm.record, EventKind.RESUMED)
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
            await self._snapshot_to(nvm, self.snapshots.path(name), "snapshot")
        finally:
            self._snapshots_in_progress.discard(name)
        log.info("VM %s: snapshot %s taken", vm_id, name)
        return self.snapshots.info(name)

    async def snapshot_template(self, nvm: NodeVm, directory: Path) -> None:
        """A snapshot of any VM (the warm pool's included) at ``directory``, a hidden template the
        caller owns and removes: not listed, swept at the next start."""
        await self._snapshot_to(nvm, directory, "snapshot")

    async def _snapshot_to(self, nvm: NodeVm, directory: Path, action: str) -> None:
        """Pause a Running VM (a Paused one stays paused), write its snapshot to ``directory``, run it
        again. On failure nothing is left at ``directory`` and the VM is as it was."""
        async with nvm.operation:
            self._in_state(nvm, action, VmState.RUNNING, VmState.PAUSED)
            assert nvm.vm is not None
            vm = nvm.vm
            if vm.vmm is None or type(vm.vmm).snapshot is VmmProcess.snapshot:
                # A VMM adopted after a restart: its VM spec is not known here (before any pause).
                raise errors.FailedPrecondition(f"VM {nvm.id}: its VMM process cannot take snapshots")
            was_running = nvm.record.state is VmState.RUNNING
            if was_running:
                if nvm.health_task is not None:
                    nvm.health_task.cancel()
                await self._vmm_operation(nvm, Vm.pause)
            try:
                await vm.snapshot(directory)
            except (VmmUnsupported, VmNotRunning) as exc:
                raise errors.FailedPrecondition(f"VM {nvm.id}: {exc}") from exc
            except VmmError as exc:
                raise _snapshot_failed(nvm.id, exc) from exc
            finally:
                if was_running and vm.state is VmState.PAUSED:
                    await vm.resume()

    # -- fork -----------------------------------------------------------------------------------------

    def check_fork(self, vm_id: str) -> NodeVm:
        """The source of a fork, before anything is reserved: FAILED_PRECONDITION unless it is Running
        on a backend that snapshots and restores."""
        nvm = self.get(vm_id)
        self._require(nvm, Feature.SNAPSHOT | Feature.RESTORE, "fork")
        self._in_state(nvm, "fork", VmState.RUNNING)
        return nvm

    async def fork(self, source: NodeVm, clones: list[NodeVm], request: VmRequest) -> list[VmView]:
        """Restore each reserved clone from a snapshot of ``source`` (a hidden template), concurrently.

        The template lives only for the fork: once every clone has started, their RAM maps its memory
        file privately (the pages stay while mapped) and their drives are copies, so it is removed at
        once, success or failure: nothing to refcount, nothing left behind. All or nothing: when one
        clone fails, the others are deleted and the first error is raised."""
        template = self.snapshots.root / f".fork-{source.id}-{secrets.token_hex(4)}"
        started = time.monotonic()
        try:
            try:
                await self._snapshot_to(source, template, "fork")
                manifest = await asyncio.to_thread(read_manifest, template)
                snapshotted = time.monotonic()
            except BaseException:
                await asyncio.gather(*(to_completion(self._discard(c)) for c in clones))
                raise
            restore_from = RestoreSource(template, manifest)
            results = await asyncio.gather(
                *(self.boot(clone, request, restore_from) for clone in clones), return_exceptions=True
            )
        finally:
            await asyncio.to_thread(shutil.rmtree, template, True)
        views = [r for r in results if isinstance(r, VmView)]
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            await asyncio.gather(*(self.delete(v.record.id) for v in views), return_exceptions=True)
            raise failures[0]
        log.info(
            "VM %s: forked into %s (snapshot %.0f ms, copies %.0f ms)",
            source.id,
            ", ".join(v.record.id for v in views),
            (snapshotted - started) * 1000,
            (time.monotonic() - snapshotted) * 1000,
        )
        return views

    # -- the warm pool's hand-out --------------------------------------------------------------------

    async def hand_out(self, nvm: NodeVm, labels: dict[str, str]) -> VmView:
        """A warm pool VM becomes a user VM: running (resumed when kept paused), fresh RNG entropy and
        the host's clock through its agent, origin pool, the caller's labels.

        Its id, address, TAP, MAC and hostname are its own already: given when it was restored into the
        pool, never seen by a user. A failure raises (the caller discards the VM and falls back)."""
        async with nvm.operation:
            if nvm.deleting or nvm.record.origin is not Origin.WARM:
                raise errors.Unavailable(f"pool VM {nvm.id} is no longer available")
            started = time.monotonic()
            if nvm.record.state is VmState.PAUSED:
                await self._vmm_operation(nvm, Vm.resume)
            elif nvm.record.state is not VmState.RUNNING:
                raise errors.Unavailable(f"pool VM {nvm.id} is {nvm.record.state}")
            resumed = time.monotonic()
            agent = await nvm.agent.connected(nvm.agent.agent_timeout)
            try:
                refreshed = await agent.refresh()
                log.info(
                    "pool VM %s: resume %.1f ms, refresh %.1f ms (in the guest %.1f ms)",
                    nvm.id,
                    (resumed - started) * 1000,
                    (time.monotonic() - resumed) * 1000,
                    refreshed.duration * 1000,
                )
            except (GuestError, TimeoutError) as exc:
                raise errors.Unavailable(f"pool VM {nvm.id}: refresh failed: {one_line(exc)}") from exc
            if nvm.deleting:
                raise errors.Unavailable(f"pool VM {nvm.id} was deleted while handed out")
            nvm.record = nvm.record.with_(
                state=VmState.RUNNING, origin=Origin.POOL, labels=dict(labels), created_at=time.time()
            )
            self.store.update(nvm.record)
            nvm.agent.mark(AgentHealth.HEALTHY, "answered the hand-out")
        return nvm.view()

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

    def _record_state(self, nvm: NodeVm, state: VmState) -> bool:
        """Record ``state``; False when a delete or a crash got there while the VMM was asked (theirs
        is the newer state)."""
        if nvm.deleting or nvm.record.state is VmState.ERROR:
            return False
        nvm.record = nvm.record.with_(state=state)
        self.store.update(nvm.record)
        return True

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
                if nvm.record.origin is Origin.WARM:
                    continue  # the pool's own: asked at hand-out
                if nvm.health_task is not None and not nvm.health_task.done():
                    continue  # the last check has not come back (it is bounded: it will)
                nvm.health_task = asyncio.create_task(self._check(nvm), name=f"health {nvm.id}")

    @staticmethod
    async def _check(nvm: NodeVm) -> None:
        try:
            await nvm.agent.check()
        except Exception:  # a bug must not kill the checks of this VM for good
            log.exception("VM %s: health check failed", nvm.id)

    # -- console and events ----------------------------------------------------------------------------

    def logs(self, vm_id: str, tail_lines: int | None, follow: bool) -> AsyncIterator[bytes]:
        """The VM's console (``clawpot.node.console.read``); following ends when the VM can print no
        more, or the node closes."""
        nvm = self.get(vm_id)
        return console.read(
            self.console_path(nvm),
            tail_lines=tail_lines,
            follow=follow,
            more_may_come=lambda: self.more_output_may_come(vm_id),
            stop=self.closing,
        )

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
        started = time.monotonic()
        session = await calls.exec_in(self.running(vm_id), params)
        instruments.EXEC_START_SECONDS.observe(time.monotonic() - started)
        return session

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
