"""What running QEMU unprivileged costs a VM start, against the same start as root, in one run.

    .venv/bin/python bench/qemu_unprivileged.py [--runs 10] [--kernel K --rootfs R]

Alternating the two (same machine load), each sample is one ``QemuProcess.start()`` under TCG, from
the call to QMP saying the guest CPU runs (the part that changes: handing files over, setpriv, QEMU's
chroot), and the QEMU process's PSS once the guest has booted into ``init=/bin/sleep``:

- ``root``: ``run_as=None``: QEMU opens its files by path, as before (the KVM probe still runs so).
- ``unprivileged``: the default: ``clawpot-vmm`` through ``setpriv``, fds handed over, chrooted.

Prints one JSON document (medians, min/max, all samples, the difference) to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

from clawpot import paths
from clawpot.vmm.account import VMM_USER
from clawpot.vmm.qemu.cmdline import Accel
from clawpot.vmm.qemu.process import QemuProcess
from clawpot.vmm.spec import Drive, VmSpec

BOOT_ARGS = "console=ttyS0 root=/dev/vda ro init=/bin/sleep -- 600"
SETTLE = 3.0  # seconds of guest boot before PSS is read


def pss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no Pss for {pid}")


async def one(spec: VmSpec, vm_dir: Path, run_as: str | None) -> tuple[float, float]:
    qemu = QemuProcess(spec, vm_dir, accel=Accel.TCG, run_as=run_as)
    began = time.perf_counter()
    await qemu.start()
    elapsed = time.perf_counter() - began
    await asyncio.sleep(SETTLE)
    assert qemu.pid is not None
    pss = pss_mib(qemu.pid)
    await qemu.kill()
    qemu.remove_files()
    return elapsed, pss


def summary(samples: list[float], scale: float = 1000.0) -> dict[str, object]:
    return {
        "median": round(statistics.median(samples) * scale, 2),
        "min": round(min(samples) * scale, 2),
        "max": round(max(samples) * scale, 2),
        "samples": [round(s * scale, 2) for s in samples],
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--kernel", type=Path, default=paths.assets_dir() / "vmlinux")
    parser.add_argument("--rootfs", type=Path, default=paths.assets_dir() / "rootfs.ext4")
    args = parser.parse_args()
    spec = VmSpec(
        args.kernel, BOOT_ARGS, (Drive("root", args.rootfs, True),), memory_mib=128, agent_channel=False
    )
    results: dict[str, tuple[list[float], list[float]]] = {"root": ([], []), "unprivileged": ([], [])}
    with tempfile.TemporaryDirectory(prefix="clawpot-bench-unpriv-") as work:
        for run in range(args.runs):
            order = ("root", "unprivileged") if run % 2 == 0 else ("unprivileged", "root")
            for mode in order:
                start, pss = await one(
                    spec, Path(work) / f"{mode}-{run}", None if mode == "root" else VMM_USER
                )
                results[mode][0].append(start)
                results[mode][1].append(pss)
    report = {
        "what": "QemuProcess.start() to QMP running (ms), and QEMU PSS after boot (MiB), TCG",
        **{
            mode: {"start_ms": summary(starts), "pss_mib": summary(pss, 1.0)}
            for mode, (starts, pss) in results.items()
        },
        "start_ms_median_difference": round(
            (statistics.median(results["unprivileged"][0]) - statistics.median(results["root"][0])) * 1000, 2
        ),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
