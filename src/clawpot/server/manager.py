"""``VmManager``: the server's core. Creates, tracks, adopts and deletes VMs; proxies exec and files.

No gRPC here: the servicer translates. Every public method raises ``ServerError`` subclasses for
anything the caller did or can act on.

Persistence rules: a VM's row is written (state Starting) before anything is created for it, and is
deleted only after everything it held is released, so a crash at any point leaves a row or a
directory that ``reconcile`` at the next start can act on. A create that fails cleans up after itself
and leaves no row.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import shutil
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TypeVar

from clawpot import limits, paths
from clawpot.assets.bootargs import GuestIp, guest_cmdline
from clawpot.guest import AgentClient, GuestError, PtySize, wait_ready
from clawpot.guest.errors import AgentDisconnected, AgentUnreachable, ProtocolError, RemoteError
from clawpot.network import (
    AddressInUse,
    AddressNotAllowed,
    AddressPoolExhausted,
    NetworkConfig,
    NetworkError,
    NetworkManager,
    NetworkSlot,
)
from clawpot.server import admission, errors, orphans, paging, validate
from clawpot.server.health import AgentHealth, HealthStatus
from clawpot.server.records import endpoint_from_text, endpoint_to_text
from clawpot.server.sessions import DownloadHandle, ExecParams, ExecSession, upload_watched
from clawpot.server.store import Store, VmRecord
from clawpot.vm import procfs, validation
from clawpot.vm.config import VmConfig
from clawpot.vm.directory import new_vm_id
from clawpot.vm.errors import VmError
from clawpot.vm.machine import OVERLAY_DEVICE, Vm
from clawpot.vm.state import Transition, VmState
from clawpot.vmm.adopted import AdoptedProcess
from clawpot.vmm.base import VmmBackend, VmmError
from clawpot.vmm.registry import BackendOptions, VmmChoice, get_backend, resolve
from clawpot.vmm.spec import BackendKind

log = logging.getLogger(__name__)

T = TypeVar("T")

# States in which a VM holds host memory (admission counts them): from an accepted create until its
# delete has stopped the VMM.
_HOLDS_MEMORY = (VmState.NOT_STARTED, VmState.STARTING, VmState.RUNNING, VmState.STOPPING)


class ManagerError(Exception):
    """The manager cannot start (assets missing, data directory in use by another server, ...)."""


@dataclass(frozen=True)
class ManagerConfig:
    data_dir: Path
    # None: auto (Firecracker where KVM boots guests, else QEMU).
    default_backend: BackendKind | None = None
    # None: VMs get no network interface and the host's network is left alone.
    bridge: str | None = "clawpot-br0"
    subnet: str = "192.168.100.0/24"
    ready_timeout: float = 60.0
    stop_grace: float = 5.0
    # How long the agent of a Running VM has to answer before an operation fails with UNAVAILABLE.
    agent_timeout: float = limits.DEFAULT_AGENT_TIMEOUT
    # Committed guest memory may reach MemTotal x this (admission).
    memory_overcommit: float = limits.DEFAULT_MEMORY_OVERCOMMIT
    health_interval: float = limits.HEALTH_CHECK_INTERVAL


@dataclass(frozen=True)
class CreateParams:
    vcpus: int = limits.DEFAULT_VCPUS
    memory_mib: int = limits.DEFAULT_MEMORY_MIB
    backend: BackendKind | None = None
    labels: dict[str, str] = field(default_factory=dict)
    ip_address: str | None = None
    allow_peers: bool = False


class _Entry:
    """A VM this server process tracks: the one it started (``vm``) or adopted (``adopted``)."""

    def __init__(self, record: VmRecord) -> None:
        self.record = record
        self.vm: Vm | None = None
        self.adopted: AdoptedProcess | None = None
        self.agent: AgentClient | None = None
        self.agent_lock = asyncio.Lock()
        self.create_task: asyncio.Task[VmRecord] | None = None
        self.delete_task: asyncio.Task[None] | None = None
        self.watch_task: asyncio.Task[None] | None = None
        self.deleting = False
        self.health = HealthStatus()
        self.health_task: asyncio.Task[None] | None = None  # the periodic check in flight, if any

    @property
    def holds_memory(self) -> bool:
        return self.record.state in _HOLDS_MEMORY


@dataclass(frozen=True)
class VmView:
    """A VM as ``get`` and ``list`` show it: its stored record and what the server sees of its agent."""

    record: VmRecord
    health: HealthStatus


class VmManager:
    def __init__(
        self, config: ManagerConfig, store: Store, network: NetworkManager | None, lock: IO[str]
    ) -> None:
        self.config = config
        self.store = store
        self.network = network
        self._lock_file = lock
        self._entries: dict[str, _Entry] = {}
        self._backends: dict[BackendKind, VmmBackend] = {}
        self._health_loop_task: asyncio.Task[None] | None = None
        self.vms_root = paths.vms_dir(config.data_dir)
        assets = paths.assets_dir(config.data_dir)
        self.kernel = assets / "vmlinux"
        self.rootfs = assets / "rootfs.ext4"
        self.firecracker = assets / "firecracker"

    # -- startup and shutdown -------------------------------------------------------------------------

    @classmethod
    async def open(cls, config: ManagerConfig) -> VmManager:
        config.data_dir.mkdir(parents=True, exist_ok=True)
        lock = _lock_data_dir(config.data_dir)
        try:
            assets = paths.assets_dir(config.data_dir)
            missing = [n for n in ("vmlinux", "rootfs.ext4") if not (assets / n).is_file()]
            if missing:
                raise ManagerError(
                    f"VM assets missing in {assets} ({', '.join(missing)}): run `clawpot assets install`"
                )
            store = Store(paths.state_db(config.data_dir))
            network = None
            if config.bridge is not None:
                try:
                    net_config = NetworkConfig.build(bridge=config.bridge, subnet=config.subnet)
                    network = NetworkManager(store.path, net_config)
                except NetworkError as exc:
                    raise ManagerError(str(exc)) from exc
            manager = cls(config, store, network, lock)
            await manager.reconcile()
            manager._health_loop_task = asyncio.create_task(manager._health_loop(), name="agent health")
            return manager
        except BaseException:
            lock.close()
            raise

    async def reconcile(self) -> None:
        """Adopt VMs whose VMM still runs, mark the others Error and free what they held, then
        remove VM directories nobody owns and make the network agree with the store."""
        self.vms_root.mkdir(parents=True, exist_ok=True)
        for record in self.store.list():
            entry = _Entry(record)
            self._entries[record.id] = entry
            alive = record.pid is not None and procfs.is_alive(record.pid, record.vmm_start_ticks)
            if record.state is VmState.RUNNING and alive:
                assert record.pid is not None
                entry.adopted = AdoptedProcess(
                    record.pid,
                    record.vmm_start_ticks,
                    endpoint_from_text(record.agent_endpoint),
                    record.vm_dir,
                    kind=record.backend,  # takes the VM's serial console back
                )
                entry.watch_task = asyncio.create_task(self._watch_adopted(entry))
                log.info("adopted VM %s (VMM pid %d)", record.id, record.pid)
                continue
            if alive and record.pid is not None:
                # Stopping when the last server died: finish it off.
                with contextlib.suppress(VmmError):
                    await AdoptedProcess(record.pid, record.vmm_start_ticks, None, record.vm_dir).kill()
            # Starting when the last server died: the VMM may run, but its PID is recorded only once
            # the VM is Running.
            await orphans.kill_vmm_of(record.vm_dir)
            if record.state is not VmState.ERROR or record.ip_address:
                reason = record.error or f"VMM process gone when the server restarted (was {record.state})"
                # The address is released below: a VM that no longer holds it must not show it.
                entry.record = record.with_(state=VmState.ERROR, error=reason, pid=None, ip_address="")
                self.store.update(entry.record)
                log.warning("VM %s: %s", record.id, reason)
            await self._release_resources(entry.record, keep_address=False)
        known = set(self._entries)
        for path in sorted(self.vms_root.iterdir()) if self.vms_root.exists() else []:
            if path.name not in known:
                await orphans.remove_orphan_dir(path)
        if self.network is not None:
            keep = [e.record.id for e in self._entries.values() if e.record.state is not VmState.ERROR]
            plan = await asyncio.to_thread(self.network.reconcile, keep)
            log.info("network reconciled: %s", plan)

    async def close(self, *, stop_vms: bool) -> None:
        if self._health_loop_task is not None:
            self._health_loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_loop_task
        for entry in list(self._entries.values()):
            if entry.health_task is not None:
                entry.health_task.cancel()
                await asyncio.gather(entry.health_task, return_exceptions=True)
            if entry.create_task is not None and not entry.create_task.done():
                entry.create_task.cancel()
                with contextlib.suppress(BaseException):
                    await entry.create_task
        if stop_vms:
            await asyncio.gather(
                *(self.delete(vm_id) for vm_id in list(self._entries)), return_exceptions=True
            )
        for entry in self._entries.values():
            if entry.agent is not None:
                await _close_agent(entry.agent)
            if entry.watch_task is not None:
                entry.watch_task.cancel()
            if entry.adopted is not None:
                entry.adopted.detach()
            if entry.vm is not None and entry.vm.vmm is not None:
                # Leave the VMM running for the next server to adopt; stop watching it.
                detach = getattr(entry.vm.vmm, "detach", None)
                if callable(detach):
                    detach()
        if self.network is not None and not self._entries:
            with contextlib.suppress(NetworkError):
                await asyncio.to_thread(self.network.teardown)
        self.store.close()
        self._lock_file.close()

    # -- queries --------------------------------------------------------------------------------------

    async def get(self, vm_id: str) -> VmView:
        entry = self._entry(vm_id)
        return VmView(entry.record, entry.health)

    async def list_page(self, page_size: int, page_token: str) -> tuple[list[VmView], str]:
        """One page of VMs in creation order and the token of the next page ('' after the last)."""
        size = paging.page_size(page_size)
        views = [VmView(e.record, e.health) for e in self._entries.values()]
        return paging.page(views, lambda v: (v.record.created_at, v.record.id), size, page_token)

    def _entry(self, vm_id: str) -> _Entry:
        validate.vm_id(vm_id)
        entry = self._entries.get(vm_id)
        if entry is None:
            raise errors.NotFound(f"VM {vm_id} not found")
        return entry

    # -- create ---------------------------------------------------------------------------------------

    def _validate(self, params: CreateParams) -> None:
        validate.vcpus(params.vcpus)
        validate.memory_mib(params.memory_mib)
        if params.ip_address:
            validate.ip_address(params.ip_address)
            if self.network is None:
                raise errors.InvalidArgument("this server runs without networking (--no-network)")
        validate.labels(params.labels)

    def _admit(self, memory_mib: int) -> None:
        """RESOURCE_EXHAUSTED unless the host has room for one more VM of ``memory_mib``.

        The caller records the VM right after, with no ``await`` in between: the check and the
        reservation are one step for the event loop, so concurrent creates cannot overbook.
        """
        total = validation.host_total_mib()
        if total is None:
            return  # no /proc/meminfo: nothing to check against
        committed = [e.record.memory_mib for e in self._entries.values() if e.holds_memory]
        host = admission.HostMemory(total, validation.host_available_mib())
        admission.check(memory_mib, committed, host, overcommit=self.config.memory_overcommit)

    def _backend(self, kind: BackendKind | None) -> VmmBackend:
        data = self.config.data_dir
        resolved = kind or self.config.default_backend or resolve(VmmChoice.AUTO, data)
        backend = self._backends.get(resolved)
        if backend is None:
            options = BackendOptions(
                binary=self.firecracker
                if resolved is BackendKind.FIRECRACKER and self.firecracker.exists()
                else None,
                data_dir=data,
                # The server's VMs outlive it: a restarted server adopts them.
                die_with_parent=False,
            )
            try:
                backend = get_backend(resolved.value, options)
            except VmmError as exc:
                raise errors.Unavailable(f"{resolved} backend unusable here: {exc}") from exc
            capabilities = backend.capabilities()
            if not capabilities.available:
                raise errors.Unavailable(f"{resolved} backend unusable here: {capabilities.detail}")
            self._backends[resolved] = backend
        return backend

    async def create(self, params: CreateParams) -> VmView:
        self._validate(params)
        backend = self._backend(params.backend)
        # From here to the insertion into ``_entries``: no await (see _admit).
        self._admit(params.memory_mib)
        vm_id = new_vm_id()
        record = VmRecord(
            id=vm_id,
            state=VmState.STARTING,
            backend=backend.kind,
            vcpus=params.vcpus,
            memory_mib=params.memory_mib,
            vm_dir=self.vms_root / vm_id,
            labels=dict(params.labels),
            allow_peers=params.allow_peers,
        )
        self.store.insert(record)
        entry = _Entry(record)
        self._entries[vm_id] = entry
        entry.create_task = asyncio.create_task(self._create(entry, backend, params), name=f"create {vm_id}")
        try:
            # Shielded, so that a cancelled RPC reaches the boot only through the path below.
            record = await asyncio.shield(entry.create_task)
            return VmView(record, entry.health)
        except asyncio.CancelledError:
            # The RPC was cancelled (client gone, or the server stopping): stop the boot and let its
            # own error path undo everything, so no half-made VM is left. Undoing it from here instead
            # would race the boot, which keeps going until it is cancelled.
            if not entry.create_task.done():
                entry.create_task.cancel()
            with contextlib.suppress(BaseException):
                await _to_completion(entry.create_task)
            raise

    async def _create(self, entry: _Entry, backend: VmmBackend, params: CreateParams) -> VmRecord:
        vm_id = entry.record.id
        try:
            slot = await self._attach_network(vm_id, params)
            if slot is not None:
                entry.record = entry.record.with_(ip_address=str(slot.address))
                self.store.update(entry.record)
            config = VmConfig(
                kernel=self.kernel,
                rootfs=self.rootfs,
                vcpus=params.vcpus,
                memory_mib=params.memory_mib,
                boot_args=self._boot_args(vm_id, slot),
                network_interfaces=(slot.interface(),) if slot is not None else (),
                ready_timeout=self.config.ready_timeout,
                labels=dict(params.labels),
            )
            vm = Vm(config, backend, vm_id=vm_id, root=self.vms_root, stop_grace=self.config.stop_grace)
            entry.vm = vm
            vm.machine.subscribe(lambda event: self._on_transition(entry, event))
            await vm.start()
            assert vm.vmm is not None
            entry.agent = vm.agent
            self._mark_health(entry, AgentHealth.HEALTHY, "answered at boot")
            pid = vm.vmm.pid
            entry.record = entry.record.with_(
                state=VmState.RUNNING,
                pid=pid,
                vmm_start_ticks=procfs.start_ticks(pid) if pid else None,
                agent_endpoint=endpoint_to_text(vm.vmm.agent_endpoint),
            )
            self.store.update(entry.record)
            return entry.record
        except BaseException as exc:
            if not entry.deleting:
                await _to_completion(self._discard(entry))
            if entry.deleting and not isinstance(exc, errors.ServerError):
                raise errors.FailedPrecondition(f"VM {vm_id} was deleted while it was being created") from exc
            if isinstance(exc, errors.ServerError | asyncio.CancelledError):
                raise
            if isinstance(exc, VmError | VmmError):
                raise errors.Unavailable(f"VM {vm_id} failed to start: {_one_line(exc)}") from exc
            raise

    def _boot_args(self, vm_id: str, slot: NetworkSlot | None) -> str:
        # The QEMU backend adds its TCG timer options itself when it runs without KVM.
        ip = None
        if slot is not None:
            ip = GuestIp(address=str(slot.address), gateway=str(slot.gateway), netmask=str(slot.netmask))
        return guest_cmdline(
            overlay_device=OVERLAY_DEVICE,
            hostname=vm_id,
            ip=ip,
            dns=",".join(str(d) for d in slot.dns) if slot is not None and slot.dns else None,
        )

    async def _attach_network(self, vm_id: str, params: CreateParams) -> NetworkSlot | None:
        if self.network is None:
            return None
        try:
            # A thread cannot be interrupted: a cancelled create waits for the attach to finish, so the
            # undo that follows sees (and removes) everything it made.
            return await _to_completion(
                asyncio.to_thread(
                    self.network.attach_vm, vm_id, params.ip_address or None, allow_peers=params.allow_peers
                )
            )
        except AddressPoolExhausted as exc:
            raise errors.ResourceExhausted(str(exc)) from exc
        except AddressInUse as exc:
            raise errors.AlreadyExists(str(exc)) from exc
        except AddressNotAllowed as exc:
            raise errors.InvalidArgument(str(exc)) from exc

    def _on_transition(self, entry: _Entry, event: Transition) -> None:
        if event.target is VmState.ERROR and entry.record.state is not VmState.STARTING:
            entry.record = entry.record.with_(state=VmState.ERROR, error=event.reason, ip_address="")
            self._mark_health(entry, AgentHealth.UNKNOWN, "the VM is not running")
            self.store.update(entry.record)
            asyncio.get_running_loop().create_task(self._release_after_crash(entry))

    async def _watch_adopted(self, entry: _Entry) -> None:
        assert entry.adopted is not None
        info = await entry.adopted.wait()
        if entry.deleting:
            return
        entry.record = entry.record.with_(state=VmState.ERROR, error=info.reason, pid=None, ip_address="")
        self._mark_health(entry, AgentHealth.UNKNOWN, "the VM is not running")
        self.store.update(entry.record)
        await self._release_after_crash(entry)

    async def _release_after_crash(self, entry: _Entry) -> None:
        if entry.agent is not None:
            await _close_agent(entry.agent)
            entry.agent = None
        if entry.vm is not None:
            with contextlib.suppress(Exception):
                await entry.vm.stop()
        await self._release_resources(entry.record, keep_address=False)

    async def _release_resources(self, record: VmRecord, *, keep_address: bool) -> None:
        if self.network is not None and not keep_address:
            with contextlib.suppress(NetworkError):
                await asyncio.to_thread(self.network.detach_vm, record.id)
        await asyncio.to_thread(shutil.rmtree, record.vm_dir, True)

    async def _discard(self, entry: _Entry) -> None:
        """Undo a create completely: VMM, directory, TAP, address, row."""
        if entry.vm is not None:
            with contextlib.suppress(Exception):
                await entry.vm.stop()
        await self._release_resources(entry.record, keep_address=False)
        self.store.delete(entry.record.id)
        self._entries.pop(entry.record.id, None)

    # -- delete ---------------------------------------------------------------------------------------

    async def delete(self, vm_id: str) -> None:
        """Stop the VM and free everything it held. A second delete of the same VM waits for the first.

        The work runs in its own task: a caller that goes away (a cancelled RPC) does not leave the VM
        half-deleted.
        """
        entry = self._entry(vm_id)
        if entry.delete_task is None:
            entry.delete_task = asyncio.create_task(self._delete(entry), name=f"delete {vm_id}")
        task = entry.delete_task
        try:
            await asyncio.shield(task)
        except Exception:
            if entry.delete_task is task:
                entry.delete_task = None  # let a later delete try again
            raise

    async def _delete(self, entry: _Entry) -> None:
        vm_id = entry.record.id
        entry.deleting = True
        entry.record = entry.record.with_(state=VmState.STOPPING)
        self._mark_health(entry, AgentHealth.UNKNOWN, "the VM is being deleted")
        if entry.health_task is not None:
            entry.health_task.cancel()
        with contextlib.suppress(Exception):
            self.store.update(entry.record)
        if entry.create_task is not None and not entry.create_task.done():
            entry.create_task.cancel()
            with contextlib.suppress(BaseException):
                await entry.create_task
        if entry.watch_task is not None:
            entry.watch_task.cancel()
        # A clean guest shutdown through the agent keeps the writable layer consistent; the VMM is
        # stopped after it.
        if entry.vm is not None:
            # Vm.stop asks its agent first: hand it the connection in use (it may have been reopened).
            entry.vm.agent = entry.agent
            with contextlib.suppress(Exception):
                await entry.vm.stop()
        elif entry.adopted is not None:
            if entry.agent is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(entry.agent.shutdown(), 2)
            await entry.adopted.stop(self.config.stop_grace)
        if entry.agent is not None:
            await _close_agent(entry.agent)
        await self._release_resources(entry.record, keep_address=False)
        self.store.delete(vm_id)
        self._entries.pop(vm_id, None)

    # -- agent health -------------------------------------------------------------------------------

    def _mark_health(self, entry: _Entry, health: AgentHealth, detail: str = "") -> None:
        """Record what was just seen of the VM's agent (``since`` moves only when ``health`` changes).

        Called on every agent call's outcome and by the periodic check. DEGRADED is for a connection
        dropped because the guest misbehaved (``AgentClient.violation``); it sticks (see health.py).
        """
        before = entry.health.health
        entry.health = entry.health.changed_to(health, detail)
        if entry.health.health is not before:
            log.info("VM %s agent: %s -> %s (%s)", entry.record.id, before.value,
                     entry.health.health.value, entry.health.detail)  # fmt: skip

    def _agent_lost(self, entry: _Entry, agent: AgentClient, exc: BaseException) -> None:
        """A call on ``agent`` failed because its connection broke: UNRESPONSIVE, or DEGRADED when the
        client dropped it for a protocol violation by the guest."""
        # ``violation``: set by the agent client (issue 10's channel work) when it drops a guest that
        # broke its bounds. getattr: the attribute arrives with that branch.
        violation = getattr(agent, "violation", None)
        if isinstance(violation, str) and violation:
            self._mark_health(entry, AgentHealth.DEGRADED, violation)
        else:
            self._mark_health(entry, AgentHealth.UNRESPONSIVE, f"connection lost: {_one_line(exc)}")

    async def _health_loop(self) -> None:
        """Every ``health_interval`` seconds, one ping per Running VM; never two in flight for one VM."""
        while True:
            await asyncio.sleep(self.config.health_interval)
            for entry in list(self._entries.values()):
                if entry.record.state is not VmState.RUNNING or entry.deleting:
                    continue
                if entry.health_task is not None and not entry.health_task.done():
                    continue  # the last check has not come back (it is bounded: it will)
                entry.health_task = asyncio.create_task(
                    self._check_health(entry), name=f"health {entry.record.id}"
                )

    async def _check_health(self, entry: _Entry) -> None:
        try:
            await self._connected(entry, limits.HEALTH_PING_TIMEOUT)
            return
        except errors.ServerError:
            pass  # recorded in entry.health by _connected
        except Exception:  # a bug must not kill the checks of this VM for good
            log.exception("VM %s: health check failed", entry.record.id)
            return
        # Silent for longer than a call may wait: the connection is given up. Its streams fail at once
        # (an exec without --timeout gets UNAVAILABLE instead of waiting forever on a dead agent, which
        # kills the command's process group if it ever reads again), and the next call or check opens a
        # fresh one: an agent restarted in the guest is found again through the resync handshake.
        health, agent = entry.health, entry.agent
        silent_for = time.time() - health.since
        silent = health.health is AgentHealth.UNRESPONSIVE and silent_for >= self.config.agent_timeout
        if silent and agent is not None and agent.connected:
            log.warning("VM %s: agent silent for %.0fs, dropping its connection", entry.record.id, silent_for)
            await _close_agent(agent)
            if entry.agent is agent:
                entry.agent = None

    # -- guest operations -----------------------------------------------------------------------------

    def _running(self, vm_id: str) -> _Entry:
        entry = self._entry(vm_id)
        if entry.record.state is not VmState.RUNNING or entry.deleting:
            state = VmState.STOPPING if entry.deleting else entry.record.state
            raise errors.FailedPrecondition(f"VM {vm_id} is {state}, not Running")
        return entry

    def _budget(self, deadline: float | None) -> float:
        """Seconds the next agent step may take: ``agent_timeout``, or less when a deadline is near."""
        if deadline is None:
            return self.config.agent_timeout
        return max(0.0, min(self.config.agent_timeout, deadline - asyncio.get_running_loop().time()))

    def _too_late(
        self, entry: _Entry, doing: str, budget: float, deadline: float | None
    ) -> errors.ServerError:
        """The error for an agent step that ran out of time: the exec's deadline, or the agent's."""
        vm_id = entry.record.id
        self._mark_health(entry, AgentHealth.UNRESPONSIVE, f"did not {doing} within {budget:.3g}s")
        if deadline is not None and asyncio.get_running_loop().time() >= deadline - 0.01:
            return errors.DeadlineExceeded(
                f"timed out: the agent of VM {vm_id} did not {doing} before the command's deadline"
            )
        return errors.Unavailable(f"agent of VM {vm_id} did not {doing} within {budget:.3g}s")

    async def _connected(self, entry: _Entry, budget: float, deadline: float | None = None) -> AgentClient:
        """The VM's agent connection, (re)opened when needed and checked alive with a ping, all within
        ``budget`` seconds: a frozen or wedged guest turns into UNAVAILABLE instead of a call that hangs."""
        vm_id = entry.record.id
        try:
            # The lock wait counts too: calls queued behind a ping to a wedged guest must not add up.
            async with asyncio.timeout(budget), entry.agent_lock:
                agent = entry.agent
                if agent is not None and not agent.connected:
                    # Closed since the last call: by the agent, or by the client for a violation.
                    self._agent_lost(entry, agent, AgentDisconnected("the connection was closed"))
                if agent is not None and agent.connected:
                    try:
                        await agent.ping()
                    except GuestError as exc:
                        self._agent_lost(entry, agent, exc)  # the connection died under us: reopen below
                    else:
                        self._mark_health(entry, AgentHealth.HEALTHY, "answered a ping")
                        return agent
                endpoint = endpoint_from_text(entry.record.agent_endpoint)
                if endpoint is None:
                    raise errors.Unavailable(f"VM {vm_id} has no agent channel")
                # A serial channel serves one connection at a time: the dead one must be gone first.
                if agent is not None:
                    await _close_agent(agent)
                    entry.agent = None
                try:
                    entry.agent = await wait_ready(endpoint, max(budget, 0.1))
                except (AgentUnreachable, ProtocolError) as exc:
                    self._mark_health(entry, AgentHealth.UNRESPONSIVE, f"cannot connect: {_one_line(exc)}")
                    raise errors.Unavailable(f"agent of VM {vm_id} not reachable: {_one_line(exc)}") from exc
                self._mark_health(entry, AgentHealth.HEALTHY, "answered a new connection")
                return entry.agent
        except TimeoutError:
            raise self._too_late(entry, "answer", budget, deadline) from None

    async def _agent(self, vm_id: str, deadline: float | None = None) -> tuple[_Entry, AgentClient]:
        entry = self._running(vm_id)
        return entry, await self._connected(entry, self._budget(deadline), deadline)

    async def exec(self, vm_id: str, params: ExecParams) -> ExecSession:
        validate.exec_request(params.argv, params.env, params.cwd, params.timeout)
        # With a timeout the host enforces it itself, whatever the guest does: the whole call (agent
        # check, start, output) ends by timeout + grace. The agent's own timer normally ends it first.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + params.timeout + limits.EXEC_TIMEOUT_GRACE if params.timeout else None
        entry, agent = await self._agent(vm_id, deadline)
        pty = PtySize(params.rows or 24, params.cols or 80) if params.tty else None
        budget = self._budget(deadline)
        try:
            async with asyncio.timeout(budget):
                process = await agent.exec(
                    params.argv,
                    env=params.env or None,
                    cwd=params.cwd,
                    timeout=params.timeout,
                    pty=pty,
                    stdin=params.stdin,
                )
        except TimeoutError:
            raise self._too_late(entry, "start the command", budget, deadline) from None
        except RemoteError as exc:
            raise errors.FailedPrecondition(f"cannot run {errors.quote(params.argv[0])}: {exc}") from exc
        except GuestError as exc:
            self._agent_lost(entry, agent, exc)
            raise errors.Unavailable(f"agent of VM {vm_id}: {_one_line(exc)}") from exc
        return ExecSession(
            process,
            deadline=deadline,
            timeout=params.timeout,
            on_lost=lambda e: self._agent_lost(entry, agent, e),
        )

    async def upload(self, vm_id: str, path: str, mode: int, chunks: AsyncIterator[bytes]) -> int:
        validate.guest_path(path)
        entry, agent = await self._agent(vm_id)
        try:
            return await upload_watched(
                lambda source: agent.put_file(source, path, mode=mode), chunks, self.config.agent_timeout
            )
        except TimeoutError:
            doing = f"take the data for {errors.quote(path)}"
            raise self._too_late(entry, doing, self.config.agent_timeout, None) from None
        except RemoteError as exc:
            raise errors.FailedPrecondition(f"cannot write {errors.quote(path)}: {exc}") from exc
        except GuestError as exc:
            self._agent_lost(entry, agent, exc)
            raise errors.Unavailable(f"agent of VM {vm_id}: {_one_line(exc)}") from exc

    async def download(self, vm_id: str, path: str) -> DownloadHandle:
        validate.guest_path(path)
        entry, agent = await self._agent(vm_id)
        budget = self._budget(None)
        try:
            async with asyncio.timeout(budget):
                download = await agent.open_file(path)
        except TimeoutError:
            raise self._too_late(entry, f"open {errors.quote(path)}", budget, None) from None
        except RemoteError as exc:
            raise errors.NotFound(f"cannot read {errors.quote(path)}: {exc}") from exc
        except GuestError as exc:
            self._agent_lost(entry, agent, exc)
            raise errors.Unavailable(f"agent of VM {vm_id}: {_one_line(exc)}") from exc
        return DownloadHandle(download.info.size, download.info.mode, download, stall_timeout=budget)


async def _close_agent(agent: AgentClient) -> None:
    """Close an agent connection, bounded: closing waits for unsent data, which a wedged guest never
    reads; past the bound the socket is left to the VMM's end (or the next reconnect)."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(agent.close(), limits.HEALTH_PING_TIMEOUT)


async def _to_completion(work: Awaitable[T]) -> T:
    """Await ``work`` to its end even when the caller is cancelled meanwhile; the cancellation is
    delivered afterwards. For cleanup and for work that cannot be interrupted half-way (threads)."""
    task = asyncio.ensure_future(work)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done() and task.cancelled():
                raise
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return task.result()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _lock_data_dir(data_dir: Path) -> IO[str]:
    """Hold an exclusive lock on the data directory for the server's lifetime: one server per data dir."""
    lock = open(data_dir / "server.lock", "a+")  # noqa: SIM115 - held open until close()
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise ManagerError(f"another clawpot-server is using {data_dir}") from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock
