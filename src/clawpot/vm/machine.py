"""``Vm``: one VM's life, on any backend.

``start()`` runs the boot as a list of named steps (``boot_steps()``)::

    validate → prepare directory → writable layer → kernel command line → start VMM → wait for agent

Each step logs its name and may push an undo onto the VM's cleanup stack. When a step fails the stack
runs in reverse, so a failed start leaves nothing behind, and the VM is in Error with the reason. The
same stack is what ``stop()`` unwinds after shutting the VMM down.

A watcher waits on the VMM process from the moment it runs: an exit nobody asked for moves the VM to
Error with the VMM's own explanation, as soon as the process is reaped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from clawpot import paths
from clawpot.assets.bootargs import guest_cmdline
from clawpot.assets.scratch import make_scratch_disk
from clawpot.guest import AgentClient, GuestError, wait_ready
from clawpot.guest.endpoints import AgentEndpoint
from clawpot.vm import procfs, validation
from clawpot.vm.config import VmConfig
from clawpot.vm.directory import VmDirectory, VmMetadata, new_vm_id
from clawpot.vm.errors import VmError, VmStartAborted, VmStartError
from clawpot.vm.state import StateMachine, Transition, VmState
from clawpot.vmm.base import ExitInfo, VmmBackend, VmmProcess
from clawpot.vmm.spec import Drive, VmSpec

log = logging.getLogger(__name__)

Undo = Callable[[], Awaitable[None]]
DEFAULT_STOP_GRACE = 5.0
# Guest device of the writable layer: the second drive after the root.
OVERLAY_DEVICE = "/dev/vdb"
# Console lines quoted in a readiness failure.
CONSOLE_TAIL_LINES = 8


@dataclass(frozen=True)
class Step:
    """One named boot step. ``run`` returns the undo of what it created, or None."""

    name: str
    run: Callable[[Vm], Awaitable[Undo | None]]


class Vm:
    def __init__(
        self,
        config: VmConfig,
        backend: VmmBackend,
        *,
        vm_id: str | None = None,
        root: Path | None = None,
        steps: Sequence[Step] | None = None,
        stop_grace: float = DEFAULT_STOP_GRACE,
    ) -> None:
        self.config = config
        self.backend = backend
        self.id = vm_id or new_vm_id()
        self.root = root if root is not None else paths.vms_dir()
        self.steps = tuple(steps if steps is not None else boot_steps(config))
        self.stop_grace = stop_grace
        self.machine = StateMachine()
        self.directory: VmDirectory | None = None
        self.spec: VmSpec | None = None
        self.vmm: VmmProcess | None = None
        # The agent connection: opened by readiness (when the boot waited for it), possibly replaced by
        # its user with a newer one; stop() asks it to power the guest off first.
        self.agent: AgentClient | None = None
        self.created_at = time.time()
        self.started_at: float | None = None
        self._cleanup = contextlib.AsyncExitStack()
        self._release_task: asyncio.Task[None] | None = None
        self._boot: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self.machine.subscribe(self._on_transition)

    # -- observation ---------------------------------------------------------------------------------

    @property
    def state(self) -> VmState:
        return self.machine.state

    @property
    def reason(self) -> str:
        return self.machine.reason

    @property
    def serial_log(self) -> Path | None:
        return self.vmm.serial_log if self.vmm else None

    @property
    def agent_endpoint(self) -> AgentEndpoint | None:
        return self.vmm.agent_endpoint if self.vmm else None

    @property
    def exit_info(self) -> ExitInfo | None:
        return self.vmm.exit_info if self.vmm else None

    async def wait_for(self, *states: VmState) -> VmState:
        return await self.machine.wait_for(*states)

    # -- lifecycle -----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Run the boot steps; returns in Running. Raises ``VmStartError`` (state Error, all undone)."""
        self.machine.transition(VmState.STARTING)
        self._boot = asyncio.create_task(self._run_boot(), name=f"boot {self.id}")
        try:
            await self._boot
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # our caller was cancelled; the boot task was cancelled with it and cleaned up
            raise VmStartAborted("start", "stopped while starting") from None

    async def stop(self, grace: float | None = None) -> None:
        """Stopping → graceful shutdown, grace period, SIGTERM, SIGKILL → Stopped; all files removed."""
        grace = self.stop_grace if grace is None else grace
        state = self.machine.state
        if state in (VmState.NOT_STARTED, VmState.STOPPED):
            return
        if state is VmState.STOPPING:
            await self.machine.wait_for(VmState.STOPPED)
            return
        self.machine.transition(VmState.STOPPING, "stop requested")
        if self._boot is not None and not self._boot.done():
            self._boot.cancel()
            with contextlib.suppress(BaseException):
                await self._boot
        if self.vmm is not None and self.vmm.exit_info is None:
            deadline = time.monotonic() + grace
            await self._shutdown_via_agent(self.vmm, grace)
            # What the agent did not achieve: Ctrl+Alt+Del / ACPI, the rest of the grace, SIGTERM, SIGKILL.
            info = await self.vmm.stop(max(0.0, deadline - time.monotonic()))
            log.info("vm %s: %s", self.id, info.reason)
        await self._release()
        if self._watcher is not None:
            self._watcher.cancel()
        self.machine.transition(VmState.STOPPED)

    # -- boot ----------------------------------------------------------------------------------------

    async def _run_boot(self) -> None:
        step_name = "start"
        try:
            for step in self.steps:
                step_name = step.name
                log.info("vm %s: %s", self.id, step.name)
                undo = await step.run(self)
                if undo is not None:
                    self._cleanup.push_async_callback(_logged(step.name, undo))
            if self.vmm is not None and self.vmm.exit_info is not None:
                raise VmStartError("start", self.vmm.exit_info.reason)
        except BaseException as exc:
            await self._release()
            error = exc if isinstance(exc, VmStartError) else VmStartError(step_name, _describe(exc))
            if self.machine.state is VmState.STARTING:
                self.machine.transition(VmState.ERROR, str(error))
            if isinstance(exc, Exception) and error is not exc:
                raise error from exc
            raise
        self.started_at = time.time()
        self.machine.transition(VmState.RUNNING)

    async def _shutdown_via_agent(self, vmm: VmmProcess, grace: float) -> None:
        """The cleanest power-off: the agent syncs and remounts the guest's disks, then reboots it."""
        if self.agent is None or grace <= 0:
            return
        try:
            async with asyncio.timeout(grace):
                await self.agent.shutdown()
                await vmm.wait()
        except (TimeoutError, OSError, GuestError) as exc:
            log.info("vm %s: agent shutdown did not end the VM (%s); going on", self.id, _describe(exc))

    async def _release(self) -> None:
        """Run the cleanup stack once, even if both a failing boot and stop() ask for it at the same time."""
        if self._release_task is None:
            self._release_task = asyncio.create_task(self._cleanup.aclose(), name=f"release {self.id}")
        # Shielded: a cancelled caller must not leave half the undos unrun.
        await asyncio.shield(self._release_task)

    def _watch(self, vmm: VmmProcess) -> None:
        self._watcher = asyncio.create_task(self._watch_exit(vmm), name=f"watch {self.id}")

    async def _watch_exit(self, vmm: VmmProcess) -> None:
        info = await vmm.wait()
        # While Starting, the boot pipeline reports the exit itself; wait for it to settle.
        state = await self.machine.wait_for(VmState.RUNNING, VmState.STOPPING, VmState.STOPPED, VmState.ERROR)
        if state is VmState.RUNNING:
            log.warning("vm %s: VMM exited unexpectedly: %s", self.id, info.reason)
            self.machine.transition(VmState.ERROR, info.reason)

    def _on_transition(self, event: Transition) -> None:
        suffix = f" ({event.reason})" if event.reason else ""
        log.info("vm %s: %s -> %s%s", self.id, event.source, event.target, suffix)
        if self.directory is not None and self.directory.exists():
            with contextlib.suppress(OSError):
                self.directory.write_metadata(self.metadata())

    def metadata(self) -> VmMetadata:
        vmm = self.vmm
        # Backends with one control socket (Firecracker API, QEMU QMP) expose it as ``control_socket``.
        control = getattr(vmm, "control_socket", None)
        return VmMetadata(
            id=self.id,
            backend=str(self.backend.kind),
            state=str(self.machine.state),
            reason=self.machine.reason,
            vcpus=self.config.vcpus,
            memory_mib=self.config.memory_mib,
            kernel=str(self.config.kernel),
            rootfs=str(self.config.rootfs),
            boot_args=self.spec.boot_args if self.spec else "",
            created_at=self.created_at,
            started_at=self.started_at,
            owner_pid=os.getpid(),
            owner_start_ticks=procfs.start_ticks(os.getpid()),
            vmm_pid=vmm.pid if vmm else None,
            control_socket=os.path.abspath(control) if control else None,
            serial_log=str(vmm.serial_log) if vmm else None,
        )


def _logged(step: str, undo: Undo) -> Undo:
    async def run() -> None:
        try:
            await undo()
        except Exception:
            # One failed undo must not keep the others from running.
            log.exception("undo of step %r failed", step)

    return run


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    return str(exc) or type(exc).__name__


# -- the default boot steps --------------------------------------------------------------------------


async def _validate(vm: Vm) -> None:
    validation.validate(vm.config, vms_root=vm.root, capabilities=vm.backend.capabilities())


async def _prepare_directory(vm: Vm) -> Undo:
    vm.directory = VmDirectory.create(vm.id, vm.root)
    vm.directory.write_metadata(vm.metadata())
    directory = vm.directory

    async def remove() -> None:
        directory.remove()

    return remove


async def _writable_layer(vm: Vm) -> None:
    assert vm.directory is not None
    # mkfs.ext4 is a subprocess; keep the event loop (and other VMs' watchers) running meanwhile.
    # Removing the directory removes the disk, so there is no separate undo.
    await asyncio.to_thread(make_scratch_disk, vm.directory.scratch_disk, vm.config.scratch_mib)


async def _kernel_cmdline(vm: Vm) -> None:
    assert vm.directory is not None
    config = vm.config
    boot_args = config.boot_args
    if boot_args is None:
        boot_args = guest_cmdline(
            overlay_device=OVERLAY_DEVICE if config.writable_layer else None, extra=config.extra_boot_args
        )
    drives = [Drive("rootfs", config.rootfs, read_only=True)]
    if config.writable_layer:
        drives.append(Drive("scratch", vm.directory.scratch_disk, read_only=False))
    vm.spec = VmSpec(
        kernel=config.kernel,
        boot_args=boot_args,
        drives=tuple(drives),
        vcpus=config.vcpus,
        memory_mib=config.memory_mib,
        network_interfaces=config.network_interfaces,
        agent_channel=config.agent_channel,
        labels=dict(config.labels),
    )


async def _start_vmm(vm: Vm) -> Undo:
    assert vm.directory is not None and vm.spec is not None
    vmm = vm.backend.prepare(vm.spec, vm.directory.path)
    vm.vmm = vmm
    await vmm.start()
    vm._watch(vmm)
    vm.directory.write_metadata(vm.metadata())

    async def kill() -> None:
        # Reaps and removes the VMM's sockets; harmless when it already exited.
        await vmm.kill()

    return kill


async def _wait_for_agent(vm: Vm) -> Undo:
    assert vm.vmm is not None
    endpoint = vm.vmm.agent_endpoint
    if endpoint is None:
        raise VmError("cannot wait for the agent: the VM has no agent channel")
    ready = asyncio.create_task(wait_ready(endpoint, vm.config.ready_timeout))
    exited = asyncio.create_task(vm.vmm.wait())
    try:
        done, _ = await asyncio.wait({ready, exited}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        exited.cancel()
        if not ready.done():
            ready.cancel()
    if ready not in done:
        with contextlib.suppress(BaseException):
            await ready
        raise VmError(_with_console_tail(exited.result().reason, vm.vmm.serial_log))
    try:
        # Kept open and handed to whoever uses the VM next: a serial-port channel serves exactly one
        # host connection, so closing this one and opening another would only add a reconnect.
        agent = ready.result()
    except Exception as exc:
        raise VmError(_with_console_tail(_describe(exc), vm.vmm.serial_log)) from exc
    vm.agent = agent

    async def close() -> None:
        vm.agent = None
        await agent.close()

    return close


def _with_console_tail(reason: str, serial_log: Path, lines: int = CONSOLE_TAIL_LINES) -> str:
    """``reason`` plus the guest's last console lines: a guest that never became ready says why there,
    and its directory (with the log) is removed by the undo that follows."""
    try:
        with open(serial_log, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16 * 1024))
            text = f.read().decode(errors="replace")
    except OSError:
        return reason
    tail = [line.rstrip() for line in text.splitlines() if line.strip()][-lines:]
    if not tail:
        return f"{reason} (the guest printed nothing on its console)"
    return "\n".join([reason, "last lines of the guest console:", *(f"  {line}" for line in tail)])


def boot_steps(config: VmConfig) -> list[Step]:
    """The default boot recipe for ``config``; variants edit a copy of this list."""
    steps = [Step("validate", _validate), Step("prepare directory", _prepare_directory)]
    if config.writable_layer:
        steps.append(Step("writable layer", _writable_layer))
    steps += [Step("kernel command line", _kernel_cmdline), Step("start VMM", _start_vmm)]
    if config.wait_ready:
        steps.append(Step("wait for agent", _wait_for_agent))
    return steps
