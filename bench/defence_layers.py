"""What the jailer and the per-VM cgroups add to a VM's start time and memory, against the same VMM
started without them, in one run.

    .venv/bin/python bench/defence_layers.py [--runs 10]

Firecracker (the real binary, the installed kernel and base image; 1 vCPU, 128 MiB), each run going
through every contender in a rotating order so all see the same load:

- ``firecracker_bare``: ``FIRECRACKER_BOOT`` without its cgroup step, no jailer (the baseline);
- ``firecracker_cgroup``: ``FIRECRACKER_BOOT`` (``--no-jailer``: its own cgroup, as root);
- ``firecracker_jailed``: ``JAILED_BOOT``, the default (chroot, clawpot-vmm, PID namespace, cgroup).

QEMU (``-M microvm``, TCG here, paused right after its start is measured):

- ``qemu_bare``: ``QEMU_BOOT`` without its cgroup step (the baseline);
- ``qemu_cgroup``: ``QEMU_BOOT`` (the default: its own cgroup, joined before exec).

Start time: ``start()`` until the VMM reports the guest running (Firecracker's "started" log line; QMP
``running``). Memory: the VMM process's PSS (``/proc/PID/smaps_rollup``) right after the start, and for
the jail the disk its chroot takes (the jailer copies the firecracker binary into it: that copy's pages
are not shared with other firecrackers). Prints one JSON document; ``added_*`` are medians over the
baseline's medians from this run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from clawpot import paths
from clawpot.assets.bootargs import guest_cmdline
from clawpot.vmm.base import VmmProcess
from clawpot.vmm.firecracker import boot as fc_boot
from clawpot.vmm.firecracker.backend import FirecrackerBackend, find_firecracker
from clawpot.vmm.qemu import boot as qemu_boot
from clawpot.vmm.qemu.backend import QemuBackend
from clawpot.vmm.qemu.cmdline import Accel
from clawpot.vmm.spec import Drive, VmSpec

FIRECRACKER = ("firecracker_bare", "firecracker_cgroup", "firecracker_jailed")
QEMU = ("qemu_bare", "qemu_cgroup")


def pss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    raise RuntimeError(f"no Pss in /proc/{pid}/smaps_rollup")


def disk_kib(path: Path) -> int:
    seen: set[tuple[int, int]] = set()
    total = 0
    for entry in path.rglob("*"):
        st = entry.lstat()
        # Hard links of the shared assets cost nothing: count only files with one link.
        if entry.is_file() and st.st_nlink == 1 and (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
    return total // 1024


def backend_for(name: str, binary: Path) -> FirecrackerBackend | QemuBackend:
    if name == "firecracker_bare":
        recipe = fc_boot.FIRECRACKER_BOOT.remove(fc_boot.CREATE_CGROUP)
        return FirecrackerBackend(binary, die_with_parent=False, use_jailer=False, recipe=recipe)
    if name == "firecracker_cgroup":
        return FirecrackerBackend(binary, die_with_parent=False, use_jailer=False)
    if name == "firecracker_jailed":
        return FirecrackerBackend(binary, die_with_parent=False)
    recipe = (
        qemu_boot.QEMU_BOOT if name == "qemu_cgroup" else qemu_boot.QEMU_BOOT.remove(qemu_boot.CREATE_CGROUP)
    )
    return QemuBackend(accel=Accel.TCG, vsock=False, die_with_parent=False, recipe=recipe)


async def one(name: str, binary: Path, spec: VmSpec, vm_dir: Path) -> dict[str, float]:
    vm_dir.mkdir()  # noqa: ASYNC240 - outside the timed section
    vmm: VmmProcess = backend_for(name, binary).prepare(spec, vm_dir)
    began = time.perf_counter()
    try:
        await vmm.start()
        elapsed = time.perf_counter() - began
        assert vmm.pid is not None
        result = {"start_ms": elapsed * 1000, "pss_kib": float(pss_kib(vmm.pid))}
        jail = vm_dir / "jail"
        if jail.exists():
            result["chroot_disk_kib"] = float(disk_kib(jail))
        return result
    finally:
        await vmm.kill()


def summary(samples: list[dict[str, float]]) -> dict[str, Any]:
    keys = sorted({key for sample in samples for key in sample})
    return {
        key: {
            "median": round(statistics.median(s[key] for s in samples if key in s), 2),
            "min": round(min(s[key] for s in samples if key in s), 2),
            "max": round(max(s[key] for s in samples if key in s), 2),
        }
        for key in keys
    }


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    assets = paths.assets_dir()
    binary = find_firecracker()
    assert binary is not None, "firecracker not found: clawpot assets install"
    root = Path(tempfile.mkdtemp(prefix="layers-", dir=paths.data_dir()))  # hard links need one filesystem
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in (*FIRECRACKER, *QEMU)}
    try:
        for run in range(args.runs):
            for group in (FIRECRACKER, QEMU):
                order = group[run % len(group) :] + group[: run % len(group)]
                for name in order:
                    spec = VmSpec(
                        kernel=assets / "vmlinux",
                        boot_args=guest_cmdline(overlay_device=None),
                        drives=(Drive("rootfs", assets / "rootfs.ext4", read_only=True),),
                        memory_mib=128,
                        agent_channel=name.startswith("firecracker"),
                    )
                    # Names firecracker and the jailer accept as ids: letters, digits and '-'.
                    vm_dir = root / f"{name.replace('_', '-')}-{run}"
                    samples[name].append(await one(name, binary, spec, vm_dir))
    finally:
        shutil.rmtree(root)
    results = {name: summary(values) for name, values in samples.items()}

    def added(name: str, base: str, key: str) -> float:
        return round(results[name][key]["median"] - results[base][key]["median"], 2)

    print(
        json.dumps(
            {
                "host": platform.node(),
                "kernel": platform.release(),
                "runs": args.runs,
                "results": results,
                "added_by_cgroup": {
                    "firecracker_start_ms": added("firecracker_cgroup", "firecracker_bare", "start_ms"),
                    "firecracker_pss_kib": added("firecracker_cgroup", "firecracker_bare", "pss_kib"),
                    "qemu_start_ms": added("qemu_cgroup", "qemu_bare", "start_ms"),
                    "qemu_pss_kib": added("qemu_cgroup", "qemu_bare", "pss_kib"),
                },
                "added_by_jailer_and_cgroup": {
                    "firecracker_start_ms": added("firecracker_jailed", "firecracker_bare", "start_ms"),
                    "firecracker_pss_kib": added("firecracker_jailed", "firecracker_bare", "pss_kib"),
                    "firecracker_chroot_disk_kib": results["firecracker_jailed"]["chroot_disk_kib"]["median"],
                },
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
