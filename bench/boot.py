"""Boot time of a Clawpot QEMU VM against a bare QEMU boot of the same kernel + image, in one run.

    .venv/bin/python bench/boot.py [--runs 10] [--accel auto|kvm|tcg] [--kernel K --rootfs R] [--out F]

Measures, alternating the two so both see the same machine load:

- ``bare_qemu``: ``qemu-system-x86_64`` started by hand with the same guest command line and devices
  (read-only base image, a fresh writable layer, virtio-serial agent port, rng), timed from spawn to the
  agent's ready line on the serial console. The writable layer is made before the clock starts.
- ``clawpot``: ``Vm.start()`` with the QEMU backend, timed from the call to its return, i.e. create →
  agent answered: VM directory, writable layer (mkfs), QEMU + QMP, boot, agent handshake.

Prints one JSON document (medians, min/max, all samples, the ratio clawpot/bare) to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from clawpot import paths
from clawpot.agent.protocol import READY_LINE, SERIAL_PORT_NAME
from clawpot.assets.bootargs import guest_cmdline
from clawpot.assets.scratch import make_scratch_disk
from clawpot.vm.boot import OVERLAY_DEVICE
from clawpot.vm.config import VmConfig
from clawpot.vm.handle import Vm
from clawpot.vmm.probe import probe_accelerator
from clawpot.vmm.qemu.backend import QemuBackend, find_qemu
from clawpot.vmm.qemu.cmdline import Accel, kernel_cmdline

READY_TIMEOUT = 120.0


def bare_argv(qemu: str, kernel: Path, rootfs: Path, scratch: Path, sock: Path, accel: Accel) -> list[str]:
    """What a person would type to boot this guest with plain QEMU (serial console on stdout)."""
    cmdline = kernel_cmdline(guest_cmdline(overlay_device=OVERLAY_DEVICE), accel)
    return [
        qemu, "-M", "microvm", "-accel", accel.value, "-cpu", "host" if accel is Accel.KVM else "max",
        "-smp", "1", "-m", "256M", "-nodefaults", "-no-user-config", "-no-reboot", "-display", "none",
        "-kernel", str(kernel), "-append", cmdline,
        "-object", "rng-random,id=rng0,filename=/dev/urandom", "-device", "virtio-rng-device,rng=rng0",
        "-drive", f"if=none,id=root,file={rootfs},format=raw,readonly=on",
        "-device", "virtio-blk-device,drive=root",
        "-drive", f"if=none,id=scratch,file={scratch},format=raw",
        "-device", "virtio-blk-device,drive=scratch",
        "-chardev", f"socket,id=agent,path={sock},server=on,wait=off",
        "-device", "virtio-serial-device",
        "-device", f"virtserialport,chardev=agent,name={SERIAL_PORT_NAME}",
        "-serial", "stdio",
    ]  # fmt: skip


async def bare_boot(qemu: str, kernel: Path, rootfs: Path, accel: Accel) -> float:
    with tempfile.TemporaryDirectory(prefix="clawpot-bench-") as tmp:
        scratch = make_scratch_disk(Path(tmp) / "scratch.ext4")
        argv = bare_argv(qemu, kernel, rootfs, scratch, Path(tmp) / "agent.sock", accel)
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert proc.stdout is not None and proc.stderr is not None
        try:
            async with asyncio.timeout(READY_TIMEOUT):
                while line := await proc.stdout.readline():
                    if READY_LINE in line.decode(errors="replace"):
                        return time.monotonic() - started
        except TimeoutError:
            pass
        finally:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
        stderr = (await proc.stderr.read()).decode(errors="replace").strip()
        raise RuntimeError(f"bare QEMU never printed {READY_LINE!r}: {stderr[-500:]}")


async def clawpot_boot(kernel: Path, rootfs: Path, backend: QemuBackend, vms_root: Path) -> float:
    vm = Vm(VmConfig(kernel=kernel, rootfs=rootfs, ready_timeout=READY_TIMEOUT), backend, root=vms_root)
    started = time.monotonic()
    try:
        await vm.start()
        return time.monotonic() - started
    finally:
        # grace 0: this guest does not act on the ACPI power button; nothing to wait for.
        await vm.stop(grace=0)


def summary(samples: list[float]) -> dict[str, object]:
    return {
        "median_s": round(statistics.median(samples), 3),
        "min_s": round(min(samples), 3),
        "max_s": round(max(samples), 3),
        "samples_s": [round(s, 3) for s in samples],
    }


async def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--accel", choices=["auto", "kvm", "tcg"], default="auto")
    parser.add_argument("--kernel", type=Path, default=paths.assets_dir() / "vmlinux")
    parser.add_argument("--rootfs", type=Path, default=paths.assets_dir() / "rootfs.ext4")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()

    qemu = find_qemu()
    if qemu is None:
        print("bench/boot.py: qemu-system-x86_64 not found", file=sys.stderr)
        return 2
    for asset in (args.kernel, args.rootfs):
        if not asset.is_file():
            print(f"bench/boot.py: {asset} not found (run `clawpot assets install`)", file=sys.stderr)
            return 2
    if args.accel == "auto":
        probe = await probe_accelerator(args.kernel, args.rootfs)
        accel, accel_why = probe.accel, probe.summary()
    else:
        accel, accel_why = Accel(args.accel), "forced by --accel"
    backend = QemuBackend(qemu, accel=accel)
    load_before = os.getloadavg()[0]

    bare: list[float] = []
    clawpot: list[float] = []
    with tempfile.TemporaryDirectory(prefix="clawpot-bench-vms-") as vms_root:
        for run in range(args.runs):
            # Alternate which goes first so neither always runs on a warmer page cache.
            order = ("bare", "clawpot") if run % 2 == 0 else ("clawpot", "bare")
            for which in order:
                if which == "bare":
                    bare.append(await bare_boot(qemu, args.kernel, args.rootfs, accel))
                else:
                    clawpot.append(await clawpot_boot(args.kernel, args.rootfs, backend, Path(vms_root)))
            print(
                f"run {run + 1}/{args.runs}: bare {bare[-1]:.2f} s, clawpot {clawpot[-1]:.2f} s",
                file=sys.stderr,
            )

    result = {
        "benchmark": "boot: create → agent ready (clawpot) vs spawn → ready line (bare qemu)",
        "runs": args.runs,
        "accel": accel.value,
        "accel_reason": accel_why,
        "host": {
            "kernel": platform.release(),
            "cpus": os.cpu_count(),
            "load_avg_1m_before": load_before,
            "load_avg_1m_after": os.getloadavg()[0],
        },
        "bare_qemu": summary(bare),
        "clawpot": summary(clawpot),
        "ratio_median_clawpot_over_bare": round(statistics.median(clawpot) / statistics.median(bare), 3),
    }
    text = json.dumps(result, indent=2, ensure_ascii=False)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
