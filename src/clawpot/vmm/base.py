"""The VMM interface: a backend launches VMs from a ``VmSpec`` and hands back a ``VmmProcess``.

A ``VmmProcess`` is one running hypervisor process. It knows nothing about guest readiness or the
VM lifecycle (``clawpot.vm`` owns those); it starts, stops, gets killed and reports how it exited.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path

from clawpot.guest.endpoints import AgentEndpoint
from clawpot.vmm.spec import BackendKind, VmSpec


class VmmError(Exception):
    """Root of VMM errors.

    VmmError
    ├── VmmConfigError      the VMM rejected the configuration (Firecracker fault_message, QEMU error)
    ├── VmmStartError       the process did not come up (API socket / QMP never appeared, exec failed)
    └── VmmUnsupported      the backend cannot run here (binary missing, no KVM, ...)
    """


class VmmConfigError(VmmError):
    pass


class VmmStartError(VmmError):
    pass


class VmmUnsupported(VmmError):
    pass


@dataclass(frozen=True)
class ExitInfo:
    """How a VMM process ended. ``reason`` is one line fit for a user: exit code plus the last
    error the VMM logged."""

    returncode: int | None
    signal: int | None
    reason: str


@dataclass(frozen=True)
class Capabilities:
    """What a backend offers here, so callers fail fast instead of branching on backend names."""

    kind: BackendKind
    available: bool
    detail: str
    # True when guests are expected to reach userland (false for Firecracker on kvm_pvm hosts).
    boots_guests: bool | None = None


class VmmProcess(abc.ABC):
    """One hypervisor process running one VM."""

    kind: BackendKind
    vm_dir: Path

    @property
    @abc.abstractmethod
    def pid(self) -> int | None: ...

    @property
    @abc.abstractmethod
    def serial_log(self) -> Path:
        """File receiving the guest's serial console."""

    @property
    @abc.abstractmethod
    def agent_endpoint(self) -> AgentEndpoint | None:
        """How to reach the guest agent, or None when the spec asked for no agent channel."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Spawn the VMM, configure it and start the guest. Returns once the guest CPU runs.

        On failure the process is gone and the VMM's own files are removed before raising.
        """

    @abc.abstractmethod
    async def request_shutdown(self) -> None:
        """Ask the guest to power off (Ctrl+Alt+Del / ACPI power button). Does not wait."""

    @abc.abstractmethod
    async def stop(self, grace: float = 5.0) -> ExitInfo:
        """Graceful request, then SIGTERM, then SIGKILL; reaps the process and removes its sockets."""

    @abc.abstractmethod
    async def kill(self) -> ExitInfo:
        """SIGKILL now, reap, remove sockets."""

    @abc.abstractmethod
    async def wait(self) -> ExitInfo:
        """Wait for the process to exit (for whatever reason) and return how."""

    @property
    @abc.abstractmethod
    def exit_info(self) -> ExitInfo | None:
        """Set once the process has exited and been reaped."""


class VmmBackend(abc.ABC):
    kind: BackendKind

    @abc.abstractmethod
    def capabilities(self) -> Capabilities: ...

    @abc.abstractmethod
    def prepare(self, spec: VmSpec, vm_dir: Path) -> VmmProcess:
        """Build (not start) the process object for ``spec``; files go under ``vm_dir``."""
