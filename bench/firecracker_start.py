"""Firecracker start time through Clawpot's API path against a bare ``--config-file`` launch, in one run.

    .venv/bin/python bench/firecracker_start.py [--runs 20] [--kernel K] [--rootfs R] [--firecracker F]

Both launch the same kernel, root drive, boot args, vCPUs, memory, vsock and metrics; the runs alternate
so both see the same machine load:

- ``clawpot_api``: ``FirecrackerVmm.start()``: spawn → API socket ready → PUT metrics, machine-config,
  boot-source, drives, vsock → InstanceStart acknowledged (HTTP 204). Phases are reported separately.
- ``bare_config_file``: ``firecracker --no-api --config-file``: spawn → Firecracker logs that the microVM
  was started from the config file (its own equivalent of the InstanceStart acknowledgement).

Each VM is killed as soon as it is measured. Defaults to the installed assets. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from clawpot import paths
from clawpot.assets.bootargs import guest_cmdline
from clawpot.vmm.firecracker import models
from clawpot.vmm.firecracker.backend import find_firecracker, firecracker_version
from clawpot.vmm.firecracker.handle import GUEST_CID, FirecrackerVmm
from clawpot.vmm.firecracker.handle import log as handle_log
from clawpot.vmm.spec import Drive, VmSpec

STARTED_LINE = "Successfully started microvm that was configured from one single json"
DEADLINE = 60.0
POLL = 0.0005


def summarize(samples: list[float]) -> dict[str, Any]:
    ordered = sorted(samples)
    p90 = ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]  # nearest rank
    return {
        "median_ms": round(statistics.median(ordered) * 1000, 2),
        "p90_ms": round(p90 * 1000, 2),
        "min_ms": round(ordered[0] * 1000, 2),
        "max_ms": round(ordered[-1] * 1000, 2),
        "samples_ms": [round(s * 1000, 2) for s in samples],
    }


class _StepTimes(logging.Handler):
    """Records when each of FirecrackerVmm.start()'s named steps began (it logs every step's name)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.began: dict[str, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        step = str(record.args[-1]) if isinstance(record.args, tuple) and record.args else ""
        self.began[step] = time.perf_counter()


async def clawpot_run(binary: Path, spec: VmSpec, vm_dir: Path) -> dict[str, float]:
    vm_dir.mkdir()  # noqa: ASYNC240 - outside the timed section
    vmm = FirecrackerVmm(binary, spec, vm_dir)
    steps = _StepTimes()
    handle_log.addHandler(steps)
    began = time.perf_counter()
    try:
        await vmm.start()
        done = time.perf_counter()
    finally:
        handle_log.removeHandler(steps)
        await vmm.kill()
    api_ready, configured = steps.began["metrics"], steps.began["InstanceStart"]
    return {
        "total": done - began,
        "spawn_to_api_ready": api_ready - began,
        "configure": configured - api_ready,
        "instance_start_ack": done - configured,
    }


def bare_run(binary: Path, spec: VmSpec, vm_dir: Path) -> float:
    vm_dir.mkdir()
    log = vm_dir / "firecracker.log"
    log.touch()
    (vm_dir / "firecracker.metrics").touch()
    config = models.ConfigFile(
        boot_source=models.BootSource(kernel_image_path=spec.kernel, boot_args=spec.boot_args),
        drives=tuple(
            models.Drive(
                drive_id=d.drive_id, path_on_host=d.path, is_root_device=False, is_read_only=d.read_only
            )
            for d in spec.drives
        ),
        machine_config=models.MachineConfiguration(vcpu_count=spec.vcpus, mem_size_mib=spec.memory_mib),
        vsock=models.Vsock(guest_cid=GUEST_CID, uds_path=vm_dir / "vsock.sock"),
        metrics=models.Metrics(metrics_path=vm_dir / "firecracker.metrics"),
    )
    config_path = vm_dir / "config.json"
    config_path.write_text(json.dumps(config.body()))
    argv = [
        str(binary),
        "--no-api",
        "--config-file",
        str(config_path),
        "--log-path",
        str(log),
        "--level",
        "Info",
    ]
    with open(vm_dir / "serial.log", "wb") as serial:
        began = time.perf_counter()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=serial, stderr=subprocess.STDOUT)
    try:
        with open(log, "rb") as reader:
            seen = b""
            while STARTED_LINE.encode() not in seen:
                if proc.poll() is not None:
                    raise RuntimeError(f"bare firecracker exited with {proc.returncode}; see {log}")
                if time.perf_counter() - began > DEADLINE:
                    raise RuntimeError(f"bare firecracker did not start within {DEADLINE}s")
                seen = seen[-200:] + reader.read()
                if STARTED_LINE.encode() not in seen:
                    time.sleep(POLL)
        return time.perf_counter() - began
    finally:
        proc.kill()
        proc.wait()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    assets = paths.assets_dir()
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--kernel", type=Path, default=assets / "vmlinux")
    parser.add_argument("--rootfs", type=Path, default=assets / "rootfs.ext4")
    parser.add_argument("--firecracker", type=Path, default=None)
    parser.add_argument("--vcpus", type=int, default=1)
    parser.add_argument("--memory", type=int, default=256)
    args = parser.parse_args()
    handle_log.setLevel(logging.INFO)
    handle_log.propagate = False
    binary = find_firecracker(args.firecracker)
    if binary is None or not binary.exists():
        sys.exit("firecracker not found: pass --firecracker or run `clawpot assets install`")
    for what in ("kernel", "rootfs"):
        if not getattr(args, what).exists():
            sys.exit(f"{what} {getattr(args, what)} does not exist")
    spec = VmSpec(
        kernel=args.kernel.absolute(),
        boot_args=guest_cmdline(overlay_device=None),
        drives=(Drive("rootfs", args.rootfs.absolute(), read_only=True),),
        vcpus=args.vcpus,
        memory_mib=args.memory,
    )
    clawpot: list[dict[str, float]] = []
    bare: list[float] = []
    with tempfile.TemporaryDirectory(prefix="fcbench-") as tmp:
        for run in range(args.runs):
            # Alternate which goes first, so neither always runs right after a VM was killed.
            order = ("clawpot", "bare") if run % 2 == 0 else ("bare", "clawpot")
            for which in order:
                vm_dir = Path(tmp) / f"{which[0]}{run}"
                if which == "clawpot":
                    clawpot.append(await clawpot_run(binary, spec, vm_dir))
                else:
                    bare.append(bare_run(binary, spec, vm_dir))
    totals = [r["total"] for r in clawpot]
    result = {
        "benchmark": "firecracker start: spawn -> InstanceStart acknowledged",
        "runs": args.runs,
        "firecracker": firecracker_version(binary),
        "host": {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version()},
        "guest": {"vcpus": args.vcpus, "memory_mib": args.memory, "kernel_bytes": args.kernel.stat().st_size},
        "clawpot_api": summarize(totals)
        | {
            "phases_median_ms": {
                phase: round(statistics.median(r[phase] for r in clawpot) * 1000, 2)
                for phase in ("spawn_to_api_ready", "configure", "instance_start_ack")
            }
        },
        "bare_config_file": summarize(bare),
    }
    result["clawpot_minus_bare_median_ms"] = round(
        result["clawpot_api"]["median_ms"] - result["bare_config_file"]["median_ms"], 2
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
