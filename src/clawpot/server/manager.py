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
import ipaddress
import logging
import os
import re
import shutil
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TypeVar

from clawpot import paths
from clawpot.assets.bootargs import GuestIp, guest_cmdline
from clawpot.guest import AgentClient, GuestError, PtySize, wait_ready
from clawpot.guest.errors import AgentUnreachable, RemoteError
from clawpot.network import (
    AddressInUse,
    AddressNotAllowed,
    AddressPoolExhausted,
    NetworkConfig,
    NetworkError,
    NetworkManager,
    NetworkSlot,
)
from clawpot.server import errors, orphans
from clawpot.server.records import endpoint_from_text, endpoint_to_text
from clawpot.server.sessions import DownloadHandle, ExecParams, ExecSession
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

MAX_VCPUS = 32
MIN_MEMORY_MIB = 64
# An upper bound that only catches typos; what the host can give is checked separately (RESOURCE_EXHAUSTED).
MAX_MEMORY_MIB = 1024 * 1024
_VM_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


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
    agent_timeout: float = 10.0


@dataclass(frozen=True)
class CreateParams:
    vcpus: int = 1
    memory_mib: int = 256
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
        for entry in list(self._entries.values()):
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
                with contextlib.suppress(Exception):
                    await entry.agent.close()
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

    async def get(self, vm_id: str) -> VmRecord:
        return self._entry(vm_id).record

    async def list(self) -> list[VmRecord]:
        return sorted((e.record for e in self._entries.values()), key=lambda r: r.created_at)

    def _entry(self, vm_id: str) -> _Entry:
        if not _VM_ID_RE.match(vm_id):
            raise errors.InvalidArgument(f"invalid VM id {vm_id!r}")
        entry = self._entries.get(vm_id)
        if entry is None:
            raise errors.NotFound(f"VM {vm_id} not found")
        return entry

    # -- create ---------------------------------------------------------------------------------------

    def _validate(self, params: CreateParams) -> None:
        if not 1 <= params.vcpus <= MAX_VCPUS:
            raise errors.InvalidArgument(f"vcpus must be between 1 and {MAX_VCPUS}, got {params.vcpus}")
        if not MIN_MEMORY_MIB <= params.memory_mib <= MAX_MEMORY_MIB:
            raise errors.InvalidArgument(
                f"memory_mib must be between {MIN_MEMORY_MIB} and {MAX_MEMORY_MIB}, got {params.memory_mib}"
            )
        if params.ip_address:
            try:
                ipaddress.IPv4Address(params.ip_address)
            except ValueError:
                raise errors.InvalidArgument(f"invalid IPv4 address {params.ip_address!r}") from None
            if self.network is None:
                raise errors.InvalidArgument("this server runs without networking (--no-network)")
        for key in params.labels:
            if not key or len(key) > 63:
                raise errors.InvalidArgument(f"invalid label key {key!r}")
        available = validation.host_available_mib()
        if available is not None and params.memory_mib > available:
            raise errors.ResourceExhausted(
                f"not enough host memory: {params.memory_mib} MiB asked, {available} MiB available"
            )

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

    async def create(self, params: CreateParams) -> VmRecord:
        self._validate(params)
        backend = self._backend(params.backend)
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
            return await asyncio.shield(entry.create_task)
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
            self.store.update(entry.record)
            asyncio.get_running_loop().create_task(self._release_after_crash(entry))

    async def _watch_adopted(self, entry: _Entry) -> None:
        assert entry.adopted is not None
        info = await entry.adopted.wait()
        if entry.deleting:
            return
        entry.record = entry.record.with_(state=VmState.ERROR, error=info.reason, pid=None, ip_address="")
        self.store.update(entry.record)
        await self._release_after_crash(entry)

    async def _release_after_crash(self, entry: _Entry) -> None:
        if entry.agent is not None:
            with contextlib.suppress(Exception):
                await entry.agent.close()
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
            with contextlib.suppress(Exception):
                await entry.agent.close()
        await self._release_resources(entry.record, keep_address=False)
        self.store.delete(vm_id)
        self._entries.pop(vm_id, None)

    # -- guest operations -----------------------------------------------------------------------------

    async def _agent(self, vm_id: str) -> AgentClient:
        """The VM's agent connection, (re)opened when needed and checked alive: a frozen or wedged
        guest turns into UNAVAILABLE within ``agent_timeout`` instead of a call that hangs."""
        entry = self._entry(vm_id)
        if entry.record.state is not VmState.RUNNING or entry.deleting:
            state = VmState.STOPPING if entry.deleting else entry.record.state
            raise errors.FailedPrecondition(f"VM {vm_id} is {state}, not Running")
        timeout = self.config.agent_timeout
        async with entry.agent_lock:
            agent = entry.agent
            if agent is not None and agent.connected:
                try:
                    await asyncio.wait_for(agent.ping(), timeout)
                except TimeoutError:
                    raise errors.Unavailable(
                        f"agent of VM {vm_id} did not answer within {timeout:g}s"
                    ) from None
                except GuestError:
                    pass  # the connection died under us: open a new one below
                else:
                    return agent
            endpoint = endpoint_from_text(entry.record.agent_endpoint)
            if endpoint is None:
                raise errors.Unavailable(f"VM {vm_id} has no agent channel")
            # A serial channel serves one connection at a time: the dead one must be gone first.
            if agent is not None:
                with contextlib.suppress(Exception):
                    await agent.close()
                entry.agent = None
            try:
                entry.agent = await wait_ready(endpoint, timeout)
            except AgentUnreachable as exc:
                raise errors.Unavailable(f"agent of VM {vm_id} not reachable: {_one_line(exc)}") from exc
            return entry.agent

    async def exec(self, vm_id: str, params: ExecParams) -> ExecSession:
        if not params.argv:
            raise errors.InvalidArgument("exec needs a command (argv is empty)")
        if params.timeout is not None and params.timeout < 0:
            raise errors.InvalidArgument("timeout must be >= 0")
        agent = await self._agent(vm_id)
        pty = PtySize(params.rows or 24, params.cols or 80) if params.tty else None
        try:
            async with asyncio.timeout(self.config.agent_timeout):
                process = await agent.exec(
                    params.argv,
                    env=params.env or None,
                    cwd=params.cwd,
                    timeout=params.timeout,
                    pty=pty,
                    stdin=params.stdin,
                )
        except TimeoutError:
            raise errors.Unavailable(
                f"agent of VM {vm_id} did not start the command within {self.config.agent_timeout:g}s"
            ) from None
        except RemoteError as exc:
            raise errors.FailedPrecondition(f"cannot run {params.argv[0]!r}: {exc}") from exc
        except GuestError as exc:
            raise errors.Unavailable(f"agent of VM {vm_id}: {exc}") from exc
        return ExecSession(process)

    async def upload(self, vm_id: str, path: str, mode: int, chunks: AsyncIterator[bytes]) -> int:
        _check_guest_path(path)
        agent = await self._agent(vm_id)
        try:
            return await agent.put_file(chunks, path, mode=mode)
        except RemoteError as exc:
            raise errors.FailedPrecondition(f"cannot write {path}: {exc}") from exc
        except GuestError as exc:
            raise errors.Unavailable(f"agent of VM {vm_id}: {exc}") from exc

    async def download(self, vm_id: str, path: str) -> DownloadHandle:
        _check_guest_path(path)
        agent = await self._agent(vm_id)
        try:
            async with asyncio.timeout(self.config.agent_timeout):
                download = await agent.open_file(path)
        except TimeoutError:
            raise errors.Unavailable(
                f"agent of VM {vm_id} did not open {path} within {self.config.agent_timeout:g}s"
            ) from None
        except RemoteError as exc:
            raise errors.NotFound(f"cannot read {path}: {exc}") from exc
        except GuestError as exc:
            raise errors.Unavailable(f"agent of VM {vm_id}: {exc}") from exc
        return DownloadHandle(download.info.size, download.info.mode, download)


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


def _check_guest_path(path: str) -> None:
    if not path.startswith("/"):
        raise errors.InvalidArgument(f"guest path must be absolute, got {path!r}")
    if "\0" in path:
        raise errors.InvalidArgument("guest path contains a NUL byte")


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
