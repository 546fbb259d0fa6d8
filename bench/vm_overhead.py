"""What one idle VM costs the host beyond its guest RAM: the number admission adds per VM.

    .venv/bin/python bench/vm_overhead.py [--runs 3] [--memory 256] [--idle 10] [--accel tcg|kvm|auto]

For each run, boots a Clawpot QEMU VM (``Vm.start()``: boot to agent ready), leaves it idle ``--idle``
seconds, then reads the QEMU process's ``/proc/PID/smaps``: the guest RAM is the one anonymous (or
memfd) mapping of the VM's memory size; everything else resident (QEMU's code and heap, the TCG translation
cache, device state, thread stacks) is the overhead. Baseline in the same run: a bare QEMU with the
same machine and memory, started paused (``-S``: no guest code runs), measured the same way.

Prints one JSON document; limits.VM_OVERHEAD_MIB comes from its ``overhead_mib`` max.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

from clawpot import paths
from clawpot.vm.config import VmConfig
from clawpot.vm.handle import Vm
from clawpot.vmm.probe import probe_accelerator
from clawpot.vmm.qemu.backend import QemuBackend, find_qemu
from clawpot.vmm.qemu.cmdline import Accel

READY_TIMEOUT = 120.0


def smaps_split(pid: int, guest_mib: int) -> dict[str, float]:
    """Resident KiB of the process, of its guest-RAM mapping, and the rest (all in MiB)."""
    mappings: list[tuple[int, int, bool]] = []  # (size kB, rss kB, anonymous)
    size = rss = 0
    anonymous = False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
            if size:
                mappings.append((size, rss, anonymous))
            size = rss = 0
            # No path: anonymous memory. Guest RAM is a shared memfd since snapshots (issue 12): its
            # mapping is named after the memfd, and counts as guest RAM here just the same.
            anonymous = len(head) < 6 or "memory-backend-memfd" in line
        elif line.startswith("Size:"):
            size = int(head[1])
        elif line.startswith("Rss:"):
            rss = int(head[1])
    if size:
        mappings.append((size, rss, anonymous))
    want = guest_mib * 1024
    guest = min((m for m in mappings if m[2] and m[0] >= want), key=lambda m: m[0] - want)
    total = sum(m[1] for m in mappings)
    return {
        "rss_mib": round(total / 1024, 1),
        "guest_ram_rss_mib": round(guest[1] / 1024, 1),
        "overhead_mib": round((total - guest[1]) / 1024, 1),
    }


async def clawpot_vm(
    kernel: Path, rootfs: Path, backend: QemuBackend, root: Path, mib: int, idle: float
) -> dict[str, float]:
    vm = Vm(
        VmConfig(kernel=kernel, rootfs=rootfs, memory_mib=mib, ready_timeout=READY_TIMEOUT),
        backend,
        root=root,
    )
    try:
        await vm.start()
        await asyncio.sleep(idle)
        assert vm.vmm is not None and vm.vmm.pid is not None
        return smaps_split(vm.vmm.pid, mib)
    finally:
        await vm.stop(grace=0)


async def bare_paused(qemu: str, accel: Accel, mib: int) -> dict[str, float]:
    cpu = "max" if accel is Accel.TCG else "host"
    argv = [qemu, "-M", "microvm", "-accel", accel.value, "-cpu", cpu, "-smp", "1", "-m", f"{mib}M",
            "-nodefaults", "-no-user-config", "-display", "none", "-S"]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(*argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        await asyncio.sleep(2)
        return smaps_split(proc.pid, mib)
    finally:
        proc.kill()
        await proc.wait()


async def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--memory", type=int, default=256)
    parser.add_argument("--idle", type=float, default=10.0)
    parser.add_argument("--accel", choices=["auto", "kvm", "tcg"], default="tcg")
    parser.add_argument("--kernel", type=Path, default=paths.assets_dir() / "vmlinux")
    parser.add_argument("--rootfs", type=Path, default=paths.assets_dir() / "rootfs.ext4")
    args = parser.parse_args()
    qemu = find_qemu()
    if qemu is None:
        print("bench/vm_overhead.py: qemu-system-x86_64 not found", file=sys.stderr)
        return 2
    if args.accel == "auto":
        accel = (await probe_accelerator(args.kernel, args.rootfs)).accel
    else:
        accel = Accel(args.accel)
    backend = QemuBackend(qemu, accel=accel)
    vms, bare = [], []
    with tempfile.TemporaryDirectory(prefix="clawpot-bench-overhead-") as root:
        for run in range(args.runs):
            bare.append(await bare_paused(qemu, accel, args.memory))
            vms.append(
                await clawpot_vm(args.kernel, args.rootfs, backend, Path(root), args.memory, args.idle)
            )
            print(f"run {run + 1}/{args.runs}: vm {vms[-1]}, bare paused {bare[-1]}", file=sys.stderr)
    result = {
        "benchmark": "per-VM host memory beyond guest RAM (QEMU RSS outside the guest-RAM mapping)",
        "accel": accel.value,
        "memory_mib": args.memory,
        "idle_s": args.idle,
        "host": {"kernel": platform.release(), "cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0]},
        "clawpot_vm": vms,
        "bare_qemu_paused": bare,
        "overhead_mib_max": max(v["overhead_mib"] for v in vms),
        "bare_overhead_mib_max": max(b["overhead_mib"] for b in bare),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
