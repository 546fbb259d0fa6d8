"""A guest printing to its serial console nonstop: the capped console against bare QEMU, in one run.

    .venv/bin/python bench/console_flood.py [--seconds 15] [--accel tcg|kvm] [--kernel K --rootfs R]

The guest's init is ``yes``: it writes its line to the console as fast as the emulated UART takes it.

- ``bare_qemu``: ``-serial file:`` (what Clawpot did before): bytes on disk after the run.
- ``clawpot``: ``QemuProcess`` (console FIFO → ``ConsoleWriter`` → ``CappedLog``): bytes the writer
  read (what got through), bytes on disk, the largest console file sampled every 20 ms, and the CPU
  time this process (the launcher: the server's role) spent in the run.

Prints one JSON document to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

from clawpot import limits, paths
from clawpot.vmm.qemu.backend import find_qemu
from clawpot.vmm.qemu.cmdline import Accel, kernel_cmdline
from clawpot.vmm.qemu.process import QemuProcess
from clawpot.vmm.spec import Drive, VmSpec

LINE = "console flood 0123456789 abcdefghijklmnopqrstuvwxyz"


def _spec(kernel: Path, rootfs: Path) -> VmSpec:
    return VmSpec(
        kernel=kernel,
        boot_args=f"console=ttyS0 root=/dev/vda ro panic=1 init=/usr/bin/yes -- {LINE}",
        drives=(Drive("root", rootfs, read_only=True),),
        memory_mib=128,
        agent_channel=False,
    )


def bare(qemu: str, spec: VmSpec, accel: Accel, work: Path, seconds: float) -> dict[str, object]:
    log = work / "bare.log"
    argv = [
        qemu, "-M", "microvm", "-accel", accel.value, "-cpu", "host" if accel is Accel.KVM else "max",
        "-m", "128M", "-nodefaults", "-no-user-config", "-display", "none",
        "-kernel", str(spec.kernel), "-append", kernel_cmdline(spec.boot_args, accel),
        "-drive", f"if=none,id=root,file={spec.root_drive.path},format=raw,readonly=on",
        "-device", "virtio-blk-device,drive=root",
        "-serial", f"file:{log}",
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(seconds)
    finally:
        proc.kill()
        proc.wait()
    return {"bytes_on_disk": log.stat().st_size}


async def capped(qemu: str, spec: VmSpec, accel: Accel, work: Path, seconds: float) -> dict[str, object]:
    vm_dir = work / "vm"
    process = QemuProcess(spec, vm_dir, accel=accel, binary=qemu, die_with_parent=True)
    cpu = os.times()
    await process.start()
    largest = 0
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                largest = max(largest, process.serial_log.stat().st_size)
            except FileNotFoundError:
                pass  # between a rotation's rename and the new file
            await asyncio.sleep(0.02)
        assert process.console is not None
        read = process.console.bytes_read
        on_disk = sum(p.stat().st_size for p in vm_dir.glob("console.log*"))
    finally:
        await process.kill()
    after = os.times()
    return {
        "bytes_through": read,
        "bytes_on_disk": on_disk,
        "largest_console_file": largest,
        "launcher_cpu_s": round(after.user + after.system - cpu.user - cpu.system, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--accel", choices=[a.value for a in Accel], default="tcg")
    parser.add_argument("--kernel", type=Path, default=paths.assets_dir() / "vmlinux")
    parser.add_argument("--rootfs", type=Path, default=paths.assets_dir() / "rootfs.ext4")
    args = parser.parse_args()
    qemu = find_qemu()
    if qemu is None:
        raise SystemExit("qemu-system-x86_64 not found")
    accel = Accel(args.accel)
    spec = _spec(args.kernel, args.rootfs)
    with tempfile.TemporaryDirectory(prefix="clawpot-bench-console-") as tmp:
        work = Path(tmp)
        result = {
            "seconds": args.seconds,
            "accel": accel.value,
            "cap_bytes": limits.CONSOLE_LOG_MAX_BYTES,
            "max_on_disk_bytes": limits.CONSOLE_LOG_MAX_BYTES * (1 + limits.CONSOLE_LOG_KEEP),
            "bare_qemu": bare(qemu, spec, accel, work, args.seconds),
            "clawpot": asyncio.run(capped(qemu, spec, accel, work, args.seconds)),
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
