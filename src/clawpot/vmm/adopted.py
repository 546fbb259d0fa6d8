"""``AttachedProcess``: a VMM this server did not start (left running by a previous server), as a
``VmmProcess`` like any other: the default of ``VmmBackend.attach``.

It is not our child, so there is no exit code to reap; a pidfd tells us the moment it exits, and
signals go through the pidfd so a recycled PID can never be hit. Identity is checked before attaching:
the PID must still have the start time recorded when the VM was created.

When it exits, its cgroup (``clawpot.vmm.cgroups``, named by the VM's id) tells whether its memory
limit killed it, and is removed. The backend also takes the VM's serial console back
(``reattach_console``), so the console file stays capped and rotated across server restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from pathlib import Path

from clawpot import limits
from clawpot.agent_client.endpoints import AgentEndpoint
from clawpot.vm import procfs
from clawpot.vm.directory import read_metadata
from clawpot.vmm.base import (
    AttachRecord,
    Capabilities,
    ExitInfo,
    VmmBackend,
    VmmError,
    VmmProcess,
    VmmUnsupported,
)
from clawpot.vmm.cgroups import CgroupError, VmCgroup
from clawpot.vmm.console import ConsoleWriter
from clawpot.vmm.spec import BackendKind, VmSpec

log = logging.getLogger(__name__)


class AttachedProcess(VmmProcess):
    def __init__(
        self, record: AttachRecord, kind: BackendKind, *, console: ConsoleWriter | None = None
    ) -> None:
        if not procfs.is_alive(record.pid, record.start_ticks):
            raise VmmError(f"VMM process {record.pid} is gone")
        self.kind = kind
        self._pid = record.pid
        self.vm_dir = record.vm_dir
        self._endpoint = record.agent_endpoint
        metadata = read_metadata(record.vm_dir / "metadata.json")
        self._serial_log = Path(metadata.serial_log) if metadata and metadata.serial_log else None
        self._control = Path(metadata.control_socket) if metadata and metadata.control_socket else None
        self._pidfd = os.pidfd_open(record.pid)
        self._exited: asyncio.Future[ExitInfo] = asyncio.get_running_loop().create_future()
        self._exit_info: ExitInfo | None = None
        asyncio.get_running_loop().add_reader(self._pidfd, self._on_exit)
        self.console = console

    @property
    def pid(self) -> int | None:
        return self._pid

    @property
    def control_socket(self) -> Path | None:
        return self._control

    @property
    def serial_log(self) -> Path:
        return self._serial_log if self._serial_log is not None else self.vm_dir / "console.log"

    @property
    def agent_endpoint(self) -> AgentEndpoint | None:
        return self._endpoint

    @property
    def exit_info(self) -> ExitInfo | None:
        return self._exit_info

    async def start(self) -> None:
        raise VmmError(f"VMM process {self._pid} already runs (attached): it cannot be started again")

    async def request_shutdown(self) -> None:
        """Without the VMM's control socket the guest cannot be asked; ``stop`` signals the VMM."""

    def _on_exit(self) -> None:
        self._close_pidfd()
        self._close_console(drain=True)
        info = ExitInfo(None, None, f"VMM process {self._pid} exited (adopted; exit status unknown)")
        # Its cgroup says whether its memory limit killed it; then it goes (the VMM is gone; its
        # parent reaps it, so the removal retries a moment).
        cgroup = VmCgroup(self.vm_dir.name)
        with contextlib.suppress(CgroupError):
            info = cgroup.explain(info)
            cgroup.remove(attempts=limits.CGROUP_REMOVE_ATTEMPTS)
        self._exit_info = info
        if not self._exited.done():
            self._exited.set_result(self._exit_info)

    def _close_pidfd(self) -> None:
        if self._pidfd >= 0:
            asyncio.get_running_loop().remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = -1

    async def wait(self) -> ExitInfo:
        return await asyncio.shield(self._exited)

    def _signal(self, sig: int) -> None:
        if self._pidfd >= 0:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._pidfd, sig)

    async def stop(self, grace: float = 5.0) -> ExitInfo:
        """SIGTERM, then SIGKILL after ``grace`` seconds; returns once the process is gone."""
        deadline = time.monotonic() + grace
        self._signal(signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wait(), max(0.1, deadline - time.monotonic()))
            return self._exited.result()
        return await self.kill()

    async def kill(self) -> ExitInfo:
        self._signal(signal.SIGKILL)
        return await self.wait()

    def _close_console(self, *, drain: bool) -> None:
        if self.console is not None:
            if drain:
                self.console.drain()
            self.console.close()
            self.console = None

    def detach(self) -> None:
        """Stop watching without touching the process (server shutdown leaving VMs running)."""
        self._close_pidfd()
        self._close_console(drain=False)
        if not self._exited.done():
            self._exited.cancel()


async def kill_pid(pid: int) -> None:
    """SIGKILL ``pid`` through a pidfd and wait until it is gone (orphans found by their command line,
    which carry no start time; a process already gone is fine)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    loop = asyncio.get_running_loop()
    gone: asyncio.Future[None] = loop.create_future()

    def exited() -> None:
        if not gone.done():
            gone.set_result(None)

    loop.add_reader(fd, exited)
    try:
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(fd, signal.SIGKILL)
        await gone
    finally:
        loop.remove_reader(fd)
        os.close(fd)


def reattach_console(kind: BackendKind, vm_dir: Path) -> ConsoleWriter | None:
    """Take back the console of a VMM started by an earlier server; None when it cannot be had (logged:
    the VM still works; its console waits once the FIFO is full, as while no server ran)."""
    try:
        if kind is BackendKind.QEMU:
            from clawpot.vmm.qemu.process import reattach_console as qemu_console

            return qemu_console(vm_dir)
        if kind is BackendKind.FIRECRACKER:
            from clawpot.vmm.firecracker.handle import SERIAL_NAME
            from clawpot.vmm.firecracker.process import reattach_console as firecracker_console

            return firecracker_console(vm_dir / SERIAL_NAME)
    except OSError as exc:
        log.warning("VM in %s: cannot reattach its serial console: %s", vm_dir, exc)
    return None


class AttachOnlyBackend(VmmBackend):
    """Stands for a backend that cannot be built here any more (its binary is gone, ...), so that VMs
    it left running can still be attached, watched and stopped; it starts nothing."""

    def __init__(self, kind: BackendKind, detail: str) -> None:
        self.kind = kind
        self.detail = detail

    def capabilities(self) -> Capabilities:
        return Capabilities(self.kind, False, self.detail)

    def prepare(self, spec: VmSpec, vm_dir: Path) -> VmmProcess:
        raise VmmUnsupported(f"{self.kind} cannot start VMs here: {self.detail}")
