"""The VMM interface: a backend launches VMs from a ``VmSpec`` (``prepare`` + ``start``) or takes back a
running one found on disk (``attach``), and either way hands back a ``VmmProcess``.

A ``VmmProcess`` is one running hypervisor process, whoever started it. It knows nothing about guest
readiness or the VM lifecycle (``clawpot.vm`` owns those); it starts, stops, gets killed, reports how
it exited, and declares pause, resume and snapshot; the backend declares restore. What a backend can do
is in ``Capabilities.features``: callers ``require`` a feature before an operation begins, so one the
backend cannot finish fails at once (``VmmUnsupported``) instead of half-way. No backend implements
pause, resume, snapshot or restore yet: the defaults below raise ``VmmUnsupported``.
"""

from __future__ import annotations

import abc
import enum
from dataclasses import dataclass
from pathlib import Path

from clawpot.agent_client.endpoints import AgentEndpoint
from clawpot.vmm.console import ConsoleWriter
from clawpot.vmm.spec import BackendKind, NetworkInterface, VmSpec


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


class Feature(enum.Flag):
    """Operations beyond start/stop that a backend may offer (``Capabilities.features``)."""

    PAUSE = enum.auto()  # pause and resume the guest's vCPUs
    SNAPSHOT = enum.auto()  # write a paused VM's memory and device state to files
    RESTORE = enum.auto()  # start a VM from such files


NO_FEATURES = Feature(0)


@dataclass(frozen=True)
class Capabilities:
    """What a backend offers here, so callers fail fast instead of branching on backend names."""

    kind: BackendKind
    available: bool
    detail: str
    # True when guests are expected to reach userland (false for Firecracker on kvm_pvm hosts).
    boots_guests: bool | None = None
    features: Feature = NO_FEATURES

    def require(self, feature: Feature, action: str) -> None:
        """Raise ``VmmUnsupported`` naming ``action`` unless every flag of ``feature`` is offered.
        Call it before ``action`` has any side effect."""
        if not self.available:
            raise VmmUnsupported(f"cannot {action}: {self.kind} cannot run here ({self.detail})")
        missing = feature & ~self.features
        if missing:
            names = ", ".join(f.name.lower() for f in Feature if f in missing and f.name)
            raise VmmUnsupported(f"cannot {action}: the {self.kind} backend does not support {names}")


@dataclass(frozen=True)
class AttachRecord:
    """What the host recorded about a running VMM, enough to take it back after a server restart."""

    pid: int
    # The process's start time (``procfs.start_ticks``): a recycled PID is never taken for the VMM.
    start_ticks: int | None
    vm_dir: Path
    agent_endpoint: AgentEndpoint | None


class VmmProcess(abc.ABC):
    """One hypervisor process running one VM: started by this process, or attached after a restart."""

    kind: BackendKind
    vm_dir: Path

    @property
    def control_socket(self) -> Path | None:
        """The VMM's one control socket (Firecracker API, QEMU QMP), recorded in the VM's metadata;
        None when it has none or it is not known."""
        return None

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

    def detach(self) -> None:  # noqa: B027 - optional: most processes hold nothing to let go of
        """Stop watching the process without touching it (a server leaving its VMs to the next one)."""

    # Legal only on a running VM; a snapshot needs the caller to pause first (backends never pause
    # implicitly). Callers check ``Capabilities.require`` before calling.

    async def pause(self) -> None:
        """Stop the guest's vCPUs; the VMM keeps running. Needs ``Feature.PAUSE``."""
        raise VmmUnsupported(f"{self.kind} cannot pause a VM")

    async def resume(self) -> None:
        """Run a paused guest's vCPUs again. Needs ``Feature.PAUSE``."""
        raise VmmUnsupported(f"{self.kind} cannot resume a VM")

    async def snapshot(self, directory: Path) -> None:
        """Write a paused VM's memory and device state under ``directory``. Needs ``Feature.SNAPSHOT``."""
        raise VmmUnsupported(f"{self.kind} cannot snapshot a VM")


class VmmBackend(abc.ABC):
    kind: BackendKind

    @abc.abstractmethod
    def capabilities(self) -> Capabilities: ...

    @abc.abstractmethod
    def prepare(self, spec: VmSpec, vm_dir: Path) -> VmmProcess:
        """Build (not start) the process object for ``spec``; files go under ``vm_dir``."""

    def attach(self, record: AttachRecord) -> VmmProcess:
        """The running VMM ``record`` names, as a ``VmmProcess`` (raises ``VmmError`` if it is gone).

        The default watches the process through a pidfd and takes its serial console back
        (``reattach_console``); a backend that can reconnect to its control socket may do more.
        """
        from clawpot.vmm.adopted import AttachedProcess  # adopted imports this module

        return AttachedProcess(record, self.kind, console=self.reattach_console(record.vm_dir))

    def reattach_console(self, vm_dir: Path) -> ConsoleWriter | None:
        """Take back the serial console of a VMM started by an earlier server (None: cannot)."""
        from clawpot.vmm.adopted import reattach_console

        return reattach_console(self.kind, vm_dir)

    def restore(
        self,
        snapshot: Path,
        vm_dir: Path,
        *,
        network_interfaces: tuple[NetworkInterface, ...] | None = None,
    ) -> VmmProcess:
        """Build (not start) a process that resumes the VM saved under ``snapshot``, with
        ``network_interfaces`` as its NICs (a clone's own TAPs; None: the snapshot's). Needs
        ``Feature.RESTORE``."""
        raise VmmUnsupported(f"{self.kind} cannot restore a snapshot")
