"""A VMM process this server did not start: left running by a previous server, adopted at restart.

It is not our child, so there is no exit code to reap; a pidfd tells us the moment it exits, and
signals go through the pidfd so a recycled PID can never be hit. Identity is checked before adopting:
the PID must still have the start time recorded when the VM was created.

Given its backend, the adopter also takes the VM's serial console back (``reattach_console``), so the
console file stays capped and rotated across server restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from pathlib import Path

from clawpot.guest.endpoints import AgentEndpoint
from clawpot.vm import procfs
from clawpot.vmm.base import ExitInfo, VmmError
from clawpot.vmm.console import ConsoleWriter
from clawpot.vmm.spec import BackendKind

log = logging.getLogger(__name__)


class AdoptedProcess:
    def __init__(
        self,
        pid: int,
        start_ticks: int | None,
        endpoint: AgentEndpoint | None,
        vm_dir: Path,
        kind: BackendKind | None = None,
    ) -> None:
        if not procfs.is_alive(pid, start_ticks):
            raise VmmError(f"VMM process {pid} is gone")
        self.pid = pid
        self.vm_dir = vm_dir
        self.agent_endpoint = endpoint
        self._pidfd = os.pidfd_open(pid)
        self._exited = asyncio.get_running_loop().create_future()
        self.exit_info: ExitInfo | None = None
        asyncio.get_running_loop().add_reader(self._pidfd, self._on_exit)
        self.console = reattach_console(kind, vm_dir) if kind is not None else None

    def _on_exit(self) -> None:
        self._close_pidfd()
        self._close_console(drain=True)
        self.exit_info = ExitInfo(None, None, f"VMM process {self.pid} exited (adopted; exit status unknown)")
        if not self._exited.done():
            self._exited.set_result(self.exit_info)

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

    async def stop(self, grace: float) -> ExitInfo:
        """SIGTERM, then SIGKILL after ``grace`` seconds; returns once the process is gone."""
        deadline = time.monotonic() + grace
        self._signal(signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wait(), max(0.1, deadline - time.monotonic()))
            return self._exited.result()  # type: ignore[no-any-return]
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
