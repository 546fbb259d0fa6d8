"""A VMM process this server did not start: left running by a previous server, adopted at restart.

It is not our child, so there is no exit code to reap; a pidfd tells us the moment it exits, and
signals go through the pidfd so a recycled PID can never be hit. Identity is checked before adopting:
the PID must still have the start time recorded when the VM was created.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path

from clawpot.guest.endpoints import AgentEndpoint
from clawpot.vm import procfs
from clawpot.vmm.base import ExitInfo, VmmError


class AdoptedProcess:
    def __init__(
        self, pid: int, start_ticks: int | None, endpoint: AgentEndpoint | None, vm_dir: Path
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

    def _on_exit(self) -> None:
        self._close_pidfd()
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

    def detach(self) -> None:
        """Stop watching without touching the process (server shutdown leaving VMs running)."""
        self._close_pidfd()
        if not self._exited.done():
            self._exited.cancel()
