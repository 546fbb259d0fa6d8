"""Which accelerator QEMU should use on this host: KVM when it boots a stock guest, else TCG.

"Is there a /dev/kvm" is not the question: ``kvm_pvm`` provides one that only runs PVM-enlightened
guests, and stock kernels die on it. So the probe boots our own kernel and root image under
``-accel kvm`` with the exact QEMU configuration a VM would get, with ``init=/bin/echo <marker>``:
the marker on the serial console proves the guest reached userland (dynamic loader and libc included,
which is where a half-working KVM fails). Anything else (QEMU refusing the CPU, a KVM internal error,
silence until the deadline) means TCG.

The boot is done once and cached in the data directory with the host's kernel release (``uname -r``);
a new host kernel (a different KVM) probes again. Cheap checks (no QEMU binary, no usable /dev/kvm)
are not cached: they are answered without booting anything and may change at any time.

Callers: the QEMU backend (accelerator choice), the backend registry (``auto`` picks Firecracker only
where KVM boots guests), ``clawpot-driver status`` and ``clawpot doctor`` (``cached_probe`` +
``AccelProbe.summary``).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from clawpot import limits
from clawpot.paths import assets_dir, data_dir
from clawpot.vmm.base import VmmError, VmmUnsupported
from clawpot.vmm.logtail import tail_text
from clawpot.vmm.qemu.cmdline import QEMU_BINARY, Accel
from clawpot.vmm.qemu.process import QemuProcess
from clawpot.vmm.spec import Drive, VmSpec

PROBE_MARKER = "CLAWPOT-PROBE-USERLAND"
CACHE_FILE = "accel-probe.json"
DEFAULT_TIMEOUT = 20.0

# What each KVM module is, for messages. kvm_pvm runs only guests built for PVM.
_KVM_PROVIDERS = {
    "kvm_intel": "kvm_intel (Intel VT-x)",
    "kvm_amd": "kvm_amd (AMD-V)",
    "kvm_pvm": "kvm_pvm (runs only PVM-enlightened guests)",
}
_KVM_FAILURE_SIGNS = ("KVM internal error", "emulation failure", "KVM_EXIT_INTERNAL_ERROR")


@dataclass(frozen=True)
class AccelProbe:
    """The answer, with enough context to explain it to a user."""

    accel: Accel
    kvm_boots_guests: bool
    # The kernel module behind /dev/kvm ("kvm_intel", "kvm_amd", "kvm_pvm"), None when unknown/absent.
    kvm_provider: str | None
    detail: str
    kernel_release: str
    method: str  # "boot" (cached) or "capability" (no boot needed)
    duration_s: float
    probed_at: float

    def summary(self) -> str:
        return f"{self.accel.value.upper()}: {self.detail}"

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> AccelProbe:
        raw = json.loads(text)
        raw["accel"] = Accel(raw["accel"])
        return cls(**raw)


def probe_cache_path(data: Path | None = None) -> Path:
    return data_dir(data) / CACHE_FILE


def kernel_release() -> str:
    return os.uname().release


def kvm_provider(sys_module: Path = Path("/sys/module")) -> str | None:
    """The loaded module providing /dev/kvm, if one we know is loaded."""
    for name in _KVM_PROVIDERS:
        if (sys_module / name).exists():
            return name
    return None


def describe_provider(provider: str | None) -> str:
    return _KVM_PROVIDERS.get(provider or "", provider or "an unknown KVM module")


def kvm_device_problem(device: Path = Path("/dev/kvm")) -> str | None:
    """Why /dev/kvm cannot be used by this process, or None when it can be opened read-write."""
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return f"no {device} (no hardware virtualization exposed to this host)"
    except PermissionError:
        return f"{device} is not accessible to this user (add it to the kvm group)"
    except OSError as exc:
        return f"{device} cannot be opened: {exc.strerror}"
    os.close(fd)
    return None


def cached_probe(data: Path | None = None) -> AccelProbe | None:
    """The cached boot probe for the running host kernel, without booting anything."""
    try:
        probe = AccelProbe.from_json(probe_cache_path(data).read_text())
    except (OSError, ValueError, TypeError, KeyError):
        return None
    return probe if probe.kernel_release == kernel_release() else None


async def probe_accelerator(
    kernel: Path,
    rootfs: Path,
    *,
    data: Path | None = None,
    force: bool = False,
    boot_timeout: float = DEFAULT_TIMEOUT,
    binary: str = QEMU_BINARY,
) -> AccelProbe:
    """Decide KVM or TCG for QEMU here, booting ``kernel`` + ``rootfs`` under KVM once if needed."""
    if shutil.which(binary) is None:
        raise VmmUnsupported(f"{binary} not found (Debian package qemu-system-x86)")
    provider = kvm_provider()
    problem = kvm_device_problem()
    if problem is not None:
        return AccelProbe(
            accel=Accel.TCG,
            kvm_boots_guests=False,
            kvm_provider=provider,
            detail=f"{problem} → TCG",
            kernel_release=kernel_release(),
            method="capability",
            duration_s=0.0,
            probed_at=time.time(),
        )
    if not force and (cached := cached_probe(data)) is not None:
        return cached
    async with _probe_lock(data):
        # Another process may have probed while we waited for the lock.
        if not force and (cached := cached_probe(data)) is not None:
            return cached
        started = time.monotonic()
        booted, why = await boot_probe(kernel, rootfs, boot_timeout=boot_timeout, binary=binary)
        duration = time.monotonic() - started
        if booted:
            detail = (
                f"KVM ({describe_provider(provider)}) booted a stock guest to userland ({duration:.1f} s)"
            )
        else:
            detail = f"KVM is {describe_provider(provider)} and cannot boot stock guests ({why}) → TCG"
        probe = AccelProbe(
            accel=Accel.KVM if booted else Accel.TCG,
            kvm_boots_guests=booted,
            kvm_provider=provider,
            detail=detail,
            kernel_release=kernel_release(),
            method="boot",
            duration_s=round(duration, 3),
            probed_at=time.time(),
        )
        _write_cache(probe, data)
        return probe


async def boot_probe(
    kernel: Path,
    rootfs: Path,
    *,
    accel: Accel = Accel.KVM,
    boot_timeout: float = DEFAULT_TIMEOUT,
    binary: str = QEMU_BINARY,
) -> tuple[bool, str]:
    """Boot under ``accel`` until the userland marker appears. Returns (reached userland, why not)."""
    for path in (kernel, rootfs):
        if not path.is_file():
            raise VmmUnsupported(f"cannot probe KVM: {path} not found (install the assets first)")
    spec = VmSpec(
        kernel=kernel,
        boot_args=f"console=ttyS0 root=/dev/vda ro panic=1 init=/bin/echo -- {PROBE_MARKER}",
        drives=(Drive("root", rootfs, read_only=True),),
        memory_mib=128,
        agent_channel=False,
    )
    work = Path(tempfile.mkdtemp(prefix="clawpot-probe-"))
    try:
        # As root (run_as=None): it boots only our own kernel and image into ``init=/bin/echo``, and
        # answers whether the host's KVM boots guests; whether the VMM account may open /dev/kvm is
        # checked when a VM starts (``qemu.confine.kvm_groups``).
        process = QemuProcess(spec, work, accel=accel, binary=binary, start_timeout=boot_timeout, run_as=None)
        try:
            await process.start()
        except VmmError as exc:
            return False, str(exc)
        try:
            return await _watch(process, boot_timeout)
        finally:
            await process.kill()
    finally:
        shutil.rmtree(work, ignore_errors=True)


async def _watch(process: QemuProcess, within: float) -> tuple[bool, str]:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        # A line of its own: the marker also appears inside the kernel's "Command line:" echo.
        if PROBE_MARKER in (line.strip() for line in _read(process.serial_log).splitlines()):
            return True, ""
        stderr = _read(process.files.qemu_log)
        for sign in _KVM_FAILURE_SIGNS:
            if sign in stderr:
                return False, sign
        if process.exit_info is not None:
            return False, f"guest ended before userland: {process.exit_info.reason}"
        await asyncio.sleep(0.05)
    return False, f"no sign of userland within {within:.0f} s"


def _read(path: Path) -> str:
    # Polled while the probe boots: only the end matters (the marker, QEMU's complaint), and the files
    # are the guest's and QEMU's to grow.
    return tail_text(path, limits.CONSOLE_TAIL_BYTES)


@contextlib.asynccontextmanager
async def _probe_lock(data: Path | None) -> AsyncIterator[None]:
    """One probe at a time per data directory (two VMs starting together must not both boot one)."""
    lock_path = probe_cache_path(data).with_suffix(".lock")
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError:
        yield  # read-only data dir: probe without the lock rather than not at all
        return
    try:
        await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write_cache(probe: AccelProbe, data: Path | None) -> None:
    path = probe_cache_path(data)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(probe.to_json())
        tmp.replace(path)
    except OSError:
        pass  # not cached: the next caller probes again, which is slower but still right


def _answer_without_booting(data: Path | None) -> tuple[bool | None, Path, Path]:
    """What can be said without booting a probe VM (the cache; no usable /dev/kvm; no assets or QEMU to
    boot, where the loaded KVM module decides: kvm_pvm cannot run our stock kernel), or None, with the
    kernel and root image a probe would boot."""
    assets = assets_dir(data_dir(data))
    kernel, rootfs = assets / "vmlinux", assets / "rootfs.ext4"
    if (cached := cached_probe(data)) is not None:
        return cached.kvm_boots_guests, kernel, rootfs
    if kvm_device_problem() is not None:
        return False, kernel, rootfs
    if not (kernel.is_file() and rootfs.is_file()) or shutil.which(QEMU_BINARY) is None:
        return kvm_provider() != "kvm_pvm", kernel, rootfs
    return None, kernel, rootfs


async def kvm_boots_guests_async(data: Path | None = None) -> bool:
    """``kvm_boots_guests`` for code running on an event loop: a probe boot (cache miss) is awaited as a
    coroutine (QEMU is a child process the loop watches), so the loop keeps serving meanwhile."""
    known, kernel, rootfs = _answer_without_booting(data)
    if known is not None:
        return known
    probe = await probe_accelerator(kernel, rootfs, data=data)
    return probe.kvm_boots_guests


def kvm_boots_guests(data: Path | None = None) -> bool:
    """Synchronous answer for callers outside an event loop's flow (backend choice ``auto``).

    Uses what is known without booting (``_answer_without_booting``); otherwise probes with the installed
    kernel and root image, in a private thread and event loop so it also works when called from inside a
    running loop.
    """
    known, kernel, rootfs = _answer_without_booting(data)
    if known is not None:
        return known
    with ThreadPoolExecutor(max_workers=1) as pool:
        probe = pool.submit(asyncio.run, probe_accelerator(kernel, rootfs, data=data)).result()
    return probe.kvm_boots_guests
