"""``Vm``: the one handle of one VM, on any backend, whether this process booted it or attached it.

Two ways a handle comes to life, one kind of object after either:

- ``Vm(config, backend).start()`` runs the boot recipe (``clawpot.vm.boot``): named steps, each
  pushing its undo onto the VM's cleanup stack. When a step fails the stack runs in reverse, so a failed
  start leaves nothing behind, and the VM is in Error with the reason.
- ``Vm.attach(vm_id, backend, vmm)`` takes a running VMM found on disk (``VmmBackend.attach``): the VM
  is Running from the start, with an empty cleanup stack (what it holds on the host is its owner's).

Then the same operations for both: ``stop`` (agent shutdown, grace, SIGTERM, SIGKILL, cleanup stack),
``kill``, ``detach`` (leave the VMM running for the next server), and ``pause``, ``resume``,
``snapshot``, each checked against the backend's ``Capabilities`` before it begins. A watcher waits
on the VMM process from the moment it runs: an exit nobody asked for moves the VM to Error with the
VMM's own explanation, as soon as the process is reaped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

from clawpot import limits, paths
from clawpot.agent_client import AgentClient, GuestError
from clawpot.agent_client.endpoints import AgentEndpoint
from clawpot.vm import procfs
from clawpot.vm.boot import Step, Undo, boot_steps
from clawpot.vm.config import VmConfig
from clawpot.vm.directory import VmDirectory, VmMetadata, new_vm_id
from clawpot.vm.errors import VmNotRunning, VmStartAborted, VmStartError
from clawpot.vm.state import StateMachine, Transition, VmState
from clawpot.vmm.base import ExitInfo, Feature, VmmBackend, VmmProcess
from clawpot.vmm.spec import VmSpec

log = logging.getLogger(__name__)

DEFAULT_STOP_GRACE = limits.DEFAULT_STOP_GRACE


class Vm:
    def __init__(
        self,
        config: VmConfig | None,
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
        self.steps = tuple(steps if steps is not None else boot_steps(config) if config is not None else ())
        self.stop_grace = stop_grace
        self.lifecycle = StateMachine()  # the state machine (clawpot.vm.state)
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
        self.lifecycle.subscribe(self._on_transition)

    # -- observation ---------------------------------------------------------------------------------

    @property
    def state(self) -> VmState:
        return self.lifecycle.state

    @property
    def reason(self) -> str:
        return self.lifecycle.reason

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
        return await self.lifecycle.wait_for(*states)

    # -- how a handle comes to life -------------------------------------------------------------------

    @classmethod
    def attach(
        cls,
        vm_id: str,
        backend: VmmBackend,
        vmm: VmmProcess,
        *,
        root: Path | None = None,
        stop_grace: float = DEFAULT_STOP_GRACE,
        state: VmState = VmState.RUNNING,
    ) -> Vm:
        """The handle of a VM whose VMM already runs (``VmmBackend.attach``): Running (or Paused, as the
        last server left it), watched."""
        if state not in (VmState.RUNNING, VmState.PAUSED):
            raise ValueError(f"only a Running or Paused VM can be attached, not {state}")
        vm = cls(None, backend, vm_id=vm_id, root=root, stop_grace=stop_grace)
        vm.lifecycle = StateMachine(state)
        vm.lifecycle.subscribe(vm._on_transition)
        vm.vmm = vmm
        vm._watch(vmm)
        return vm

    async def start(self) -> None:
        """Run the boot steps; returns in Running. Raises ``VmStartError`` (state Error, all undone)."""
        self.lifecycle.transition(VmState.STARTING)
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
        state = self.lifecycle.state
        if state in (VmState.NOT_STARTED, VmState.STOPPED):
            return
        if state is VmState.STOPPING:
            await self.lifecycle.wait_for(VmState.STOPPED)
            return
        self.lifecycle.transition(VmState.STOPPING, "stop requested")
        if self._boot is not None and not self._boot.done():
            self._boot.cancel()
            with contextlib.suppress(BaseException):
                await self._boot
        if state is VmState.PAUSED:
            # Its vCPUs are stopped: neither the agent nor the power button would be heard, so waiting
            # for either is only delay. Its writable layer is deleted with its directory anyway.
            grace = 0.0
        if self.vmm is not None and self.vmm.exit_info is None:
            deadline = time.monotonic() + grace
            await self._shutdown_via_agent(self.vmm, grace)
            # What the agent did not achieve: Ctrl+Alt+Del / ACPI, the rest of the grace, SIGTERM, SIGKILL.
            info = await self.vmm.stop(max(0.0, deadline - time.monotonic()))
            log.info("vm %s: %s", self.id, info.reason)
        await self._release()
        if self._watcher is not None:
            self._watcher.cancel()
        self.lifecycle.transition(VmState.STOPPED)

    def detach(self) -> None:
        """Stop watching the VMM and leave it running (the server stops; the next one attaches it)."""
        if self._watcher is not None:
            self._watcher.cancel()
        if self.vmm is not None:
            self.vmm.detach()

    # -- operations a backend may offer (``Capabilities.features``), checked before they begin ----------

    def _require(self, feature: Feature, action: str, state: VmState = VmState.RUNNING) -> VmmProcess:
        """The capability first (a backend that lacks it changes nothing), then the state."""
        self.backend.capabilities().require(feature, action)
        if self.lifecycle.state is not state or self.vmm is None:
            raise VmNotRunning(f"cannot {action}: VM {self.id} is {self.lifecycle.state}, not {state}")
        return self.vmm

    async def pause(self) -> None:
        """Running → Paused: the vCPUs stop; the VMM, its TAP, address and memory stay."""
        await self._require(Feature.PAUSE, "pause").pause()
        self.lifecycle.transition(VmState.PAUSED, "paused")

    async def resume(self) -> None:
        """Paused → Running."""
        await self._require(Feature.PAUSE, "resume", VmState.PAUSED).resume()
        self.lifecycle.transition(VmState.RUNNING, "resumed")

    async def snapshot(self, directory: Path) -> None:
        """Needs a paused VM (the caller pauses first; nothing here pauses implicitly)."""
        await self._require(Feature.SNAPSHOT, "snapshot", VmState.PAUSED).snapshot(directory)

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
            if self.lifecycle.state is VmState.STARTING:
                self.lifecycle.transition(VmState.ERROR, str(error))
            if isinstance(exc, Exception) and error is not exc:
                raise error from exc
            raise
        self.started_at = time.time()
        self.lifecycle.transition(VmState.RUNNING)

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
        state = await self.lifecycle.wait_for(
            VmState.RUNNING, VmState.PAUSED, VmState.STOPPING, VmState.STOPPED, VmState.ERROR
        )
        if state in (VmState.RUNNING, VmState.PAUSED):
            log.warning("vm %s: VMM exited unexpectedly: %s", self.id, info.reason)
            self.lifecycle.transition(VmState.ERROR, info.reason)

    def _on_transition(self, event: Transition) -> None:
        suffix = f" ({event.reason})" if event.reason else ""
        log.info("vm %s: %s -> %s%s", self.id, event.source, event.target, suffix)
        if self.directory is not None and self.directory.exists():
            with contextlib.suppress(OSError):
                self.directory.write_metadata(self.metadata())

    def metadata(self) -> VmMetadata:
        vmm = self.vmm
        config = self.config
        assert config is not None, "an attached VM keeps the metadata its booting server wrote"
        control = vmm.control_socket if vmm is not None else None
        return VmMetadata(
            id=self.id,
            backend=str(self.backend.kind),
            state=str(self.lifecycle.state),
            reason=self.lifecycle.reason,
            vcpus=config.vcpus,
            memory_mib=config.memory_mib,
            kernel=str(config.kernel),
            rootfs=str(config.rootfs),
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
