"""What a user asks for when starting one VM (backend-neutral; the boot pipeline turns it into a VmSpec)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from clawpot import limits
from clawpot.vmm.spec import NetworkInterface

DEFAULT_READY_TIMEOUT = limits.DEFAULT_READY_TIMEOUT
DEFAULT_SCRATCH_MIB = limits.DEFAULT_DISK_MIB


@dataclass(frozen=True)
class VmConfig:
    kernel: Path
    rootfs: Path
    vcpus: int = limits.DEFAULT_VCPUS
    memory_mib: int = limits.DEFAULT_MEMORY_MIB
    # The whole kernel command line; None builds it with clawpot.assets.bootargs.guest_cmdline.
    boot_args: str | None = None
    # Appended to a built command line (ignored when boot_args is given).
    extra_boot_args: str = ""
    # A per-VM disk carrying the guest's writes (overlayfs in the guest); the rootfs stays read-only.
    writable_layer: bool = True
    scratch_mib: int = DEFAULT_SCRATCH_MIB
    network_interfaces: tuple[NetworkInterface, ...] = ()
    agent_channel: bool = True
    # Wait for the agent's ready answer before reporting Running. Off: Running once the guest CPU runs.
    wait_ready: bool = True
    ready_timeout: float = DEFAULT_READY_TIMEOUT
    labels: dict[str, str] = field(default_factory=dict)
