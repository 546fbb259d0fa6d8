"""Helpers shared by the Firecracker and clawpot-driver integration tests.

``write_halting_kernel`` makes the smallest guest Firecracker will boot: a 64-bit ELF whose entry point
runs ``cli; hlt`` forever. It is a real guest on the real binary, used where a test needs a VM that
stays in Running for as long as the test wants, on any host: the stock kernel dies after ~10 s on
kvm_pvm hosts and boots to userland on real KVM hosts, and neither may decide a test's outcome.
Firecracker's own checks still apply to it (an entry below 1 MiB is refused at InstanceStart).
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from pathlib import Path

from clawpot.vm import procfs
from clawpot.vmm.base import Capabilities

HALT_LOAD_ADDRESS = 0x1000000  # 16 MiB, above Firecracker's minimum kernel load address
# cli; hlt; jmp back to hlt: the vCPU sleeps in KVM, using no host CPU.
_HALT_CODE = bytes([0xFA, 0xF4, 0xEB, 0xFD])


def write_halting_kernel(path: Path, load_address: int = HALT_LOAD_ADDRESS) -> Path:
    ehsize, phentsize = 64, 56
    offset = ehsize + phentsize
    size = offset + len(_HALT_CODE)
    # ELF64 header: little endian, ET_EXEC, EM_X86_64, one program header right after it.
    header = struct.pack(
        "<4sBBBBB7xHHIQQQIHHHHHH",
        b"\x7fELF", 2, 1, 1, 0, 0,
        2, 62, 1, load_address + offset, ehsize, 0, 0, ehsize, phentsize, 1, 0, 0, 0,
    )  # fmt: skip
    # PT_LOAD, R+X, the whole file mapped at load_address.
    program = struct.pack("<IIQQQQQQ", 1, 5, 0, load_address, load_address, size, size, 0x1000)
    path.write_bytes(header + program + _HALT_CODE)
    return path


def write_blank_rootfs(path: Path, size: int = 1 << 20) -> Path:
    """A drive for guests that never read it (the halting kernel)."""
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True


def process_gone(pid: int, ticks: int | None) -> bool:
    """Neither running nor a zombie: the process was reaped (its PID is free, or reused by another)."""
    now = procfs.start_ticks(pid)
    return now is None or now != ticks


def require_available(capabilities: Capabilities) -> None:
    import pytest

    if not capabilities.available:
        pytest.skip(f"firecracker cannot run here: {capabilities.detail}")
