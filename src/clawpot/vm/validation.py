"""Check a VmConfig before anything is created: no side effects, one line per problem.

Runs first, as its own phase: a bad request never spawns a process or creates a file.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from clawpot import limits
from clawpot.vm.config import VmConfig
from clawpot.vm.directory import SOCKET_NAME_RESERVE
from clawpot.vm.errors import SocketPathTooLong, VmValidationError
from clawpot.vm.sockets import check_socket_path
from clawpot.vmm.base import Capabilities

# The bounds live in ``limits`` (one source for the server, the CLI and the driver).
MIN_VCPUS = limits.MIN_VCPUS
MAX_VCPUS = limits.MAX_VCPUS
MIN_MEMORY_MIB = limits.MIN_MEMORY_MIB
_ELF_MAGIC = b"\x7fELF"
_ELFCLASS64 = 2


def problems(
    config: VmConfig,
    *,
    vms_root: Path,
    control_socket: Path | None = None,
    capabilities: Capabilities | None = None,
) -> list[str]:
    """Everything wrong with ``config``; empty when it may be started."""
    found: list[str] = []
    if capabilities is not None and not capabilities.available:
        found.append(f"{capabilities.kind} cannot run here: {capabilities.detail}")
    found += _check_vcpus(config.vcpus)
    found += _check_memory(config.memory_mib)
    found += _check_kernel(config.kernel)
    found += _check_readable_file("rootfs", config.rootfs)
    found += _check_vms_root(vms_root)
    if control_socket is not None:
        found += _check_socket(control_socket)
    if config.writable_layer and not limits.MIN_DISK_MIB <= config.scratch_mib <= limits.MAX_DISK_MIB:
        found.append(
            f"writable layer of {config.scratch_mib} MiB: it must be between {limits.MIN_DISK_MIB} "
            f"and {limits.MAX_DISK_MIB} MiB"
        )
    if config.wait_ready and config.ready_timeout <= 0:
        found.append(f"ready timeout must be positive, got {config.ready_timeout:g}s")
    return found


def validate(
    config: VmConfig,
    *,
    vms_root: Path,
    control_socket: Path | None = None,
    capabilities: Capabilities | None = None,
) -> None:
    found = problems(config, vms_root=vms_root, control_socket=control_socket, capabilities=capabilities)
    if found:
        raise VmValidationError(found)


def host_available_mib() -> int | None:
    """MemAvailable from /proc/meminfo, in MiB."""
    return _meminfo_mib("MemAvailable")


def host_total_mib() -> int | None:
    """MemTotal from /proc/meminfo, in MiB."""
    return _meminfo_mib("MemTotal")


def _meminfo_mib(key: str) -> int | None:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith(f"{key}:"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _check_vcpus(vcpus: int) -> list[str]:
    if not MIN_VCPUS <= vcpus <= MAX_VCPUS:
        return [f"vcpus must be between {MIN_VCPUS} and {MAX_VCPUS}, got {vcpus}"]
    return []


def _check_memory(memory_mib: int) -> list[str]:
    if memory_mib < MIN_MEMORY_MIB:
        return [f"memory must be at least {MIN_MEMORY_MIB} MiB, got {memory_mib} MiB"]
    available = host_available_mib()
    if available is not None and memory_mib > available:
        return [f"memory of {memory_mib} MiB exceeds the host's available memory ({available} MiB)"]
    return []


def _check_kernel(kernel: Path) -> list[str]:
    found = _check_readable_file("kernel", kernel)
    if found:
        return found
    with open(kernel, "rb") as f:
        header = f.read(5)
    if header[:4] != _ELF_MAGIC:
        return [f"kernel {kernel} is not an ELF image (a bzImage? the VMM needs the uncompressed vmlinux)"]
    if header[4] != _ELFCLASS64:
        return [f"kernel {kernel} is a 32-bit ELF; a 64-bit vmlinux is needed"]
    return []


def _check_readable_file(what: str, path: Path) -> list[str]:
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return [f"{what} {path} does not exist"]
    except OSError as exc:
        return [f"{what} {path} cannot be read: {exc.strerror}"]
    if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
        return [f"{what} {path} is not a file"]
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as exc:
        return [f"{what} {path} cannot be read: {exc.strerror}"]
    return []


def _check_vms_root(vms_root: Path) -> list[str]:
    found = _check_writable_dir("VM directory", vms_root)
    try:
        check_socket_path(vms_root / ("x" * 8) / "x", reserve=SOCKET_NAME_RESERVE - 1)
    except SocketPathTooLong as exc:
        found.append(str(exc))
    return found


def _check_socket(socket_path: Path) -> list[str]:
    found = _check_writable_dir("socket directory", socket_path.parent, must_exist=True)
    try:
        check_socket_path(socket_path)
    except SocketPathTooLong as exc:
        found.append(str(exc))
    return found


def _check_writable_dir(what: str, path: Path, must_exist: bool = False) -> list[str]:
    """``path`` is (or, unless ``must_exist``, could be created as) a directory we can write in."""
    probe = path
    if not must_exist:
        # The nearest existing ancestor decides whether the missing part can be created.
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
    if not probe.exists():
        return [f"{what} {path} does not exist"]
    if not probe.is_dir():
        return [f"{what} {path} is not a directory" if probe == path else f"{probe} is not a directory"]
    if not os.access(probe, os.W_OK | os.X_OK):
        return [f"{what} {path} is not writable"]
    return []
