"""Firecracker start time through Clawpot against a bare ``firecracker --config-file`` launch, in one run.

    .venv/bin/python bench/firecracker_start.py [--runs 20] [--kernel K] [--rootfs R] [--firecracker F]

All launch the same kernel, root drive, boot args, vCPUs, memory and vsock; each run goes
through every contender in a rotating order, so all see the same machine load:

- ``clawpot``: ``FirecrackerVmm.start()`` as the server runs it (``die_with_parent=False``: its VMs
  outlive it), its boot recipe ``FIRECRACKER_BOOT``: write the configuration file → prepare files →
  spawn firecracker with ``--config-file`` and its API socket on → its log says the microVM started.
  Each step's duration is reported as a phase (the step runner logs them at debug level).
- ``clawpot_die_with_parent``: the same as ``clawpot-driver`` and the tests run it: the parent-death
  signal is set in a preexec hook, which makes Python fork() instead of vfork().
- ``api_sequential``: how Clawpot configured Firecracker before (kept here to compare, same run): spawn →
  API socket ready → PUT machine-config, boot-source, drives, vsock one after the other →
  InstanceStart acknowledged (HTTP 204).
- ``api_parallel``: the same, with the PUTs sent concurrently (the other way to cut round trips).
- ``bare_config_file``: ``firecracker --no-api --config-file`` from ``subprocess.Popen``: spawn →
  Firecracker logs that the microVM was started from the config file (its InstanceStart answer). Its
  files (configuration, log, console) are created before its clock starts; how long that took
  is reported as a phase, not counted.

Each VM is killed as soon as it is measured. Defaults to the installed assets. Prints one JSON document;
``ratio_to_bare`` is each contender's median over the bare launch's median from the same run.
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
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from clawpot import paths
from clawpot.assets.bootargs import guest_cmdline
from clawpot.vmm.firecracker import models
from clawpot.vmm.firecracker.backend import find_firecracker, firecracker_version
from clawpot.vmm.firecracker.client import FirecrackerClient
from clawpot.vmm.firecracker.handle import STARTED_LINE, FirecrackerVmm
from clawpot.vmm.firecracker.process import FirecrackerProcess, LaunchFiles
from clawpot.vmm.spec import Drive, VmSpec
from clawpot.vmm.steps import log as steps_log

DEADLINE = 60.0
POLL = 0.0005
CONTENDERS = ("clawpot", "clawpot_die_with_parent", "api_sequential", "api_parallel", "bare_config_file")


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
    """How long each step of FirecrackerVmm.start()'s recipe took (the runner logs every step at debug
    level with its duration)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.seconds: dict[str, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        step, seconds = getattr(record, "step", None), getattr(record, "step_seconds", None)
        if isinstance(step, str) and isinstance(seconds, float):
            self.seconds[step] = seconds


async def clawpot_run(binary: Path, spec: VmSpec, vm_dir: Path, *, die_with_parent: bool) -> dict[str, float]:
    vm_dir.mkdir()  # noqa: ASYNC240 - outside the timed section
    vmm = FirecrackerVmm(binary, spec, vm_dir, die_with_parent=die_with_parent)
    steps = _StepTimes()
    steps_log.addHandler(steps)
    began = time.perf_counter()
    try:
        await vmm.start()
        done = time.perf_counter()
    finally:
        steps_log.removeHandler(steps)
        await vmm.kill()
    return {"total": done - began} | {
        name.replace(" ", "_"): steps.seconds[name] for name in vmm.recipe.names
    }


def _api_puts(client: FirecrackerClient, spec: VmSpec, vm_dir: Path) -> list[Coroutine[Any, Any, None]]:
    """The PUTs Clawpot sent before InstanceStart when it configured Firecracker over the API (not yet
    awaited: a coroutine runs only when awaited, so the caller decides one by one or all at once)."""
    drives = [
        models.Drive(drive_id=d.drive_id, path_on_host=d.path, is_root_device=False, is_read_only=d.read_only)
        for d in spec.drives
    ]
    return [
        client.put_machine_config(
            models.MachineConfiguration(vcpu_count=spec.vcpus, mem_size_mib=spec.memory_mib)
        ),
        client.put_boot_source(models.BootSource(kernel_image_path=spec.kernel, boot_args=spec.boot_args)),
        *(client.put_drive(drive) for drive in drives),
        client.put_vsock(models.Vsock(guest_cid=3, uds_path=vm_dir / "vsock.sock")),
    ]


async def api_run(binary: Path, spec: VmSpec, vm_dir: Path, *, parallel: bool) -> dict[str, float]:
    vm_dir.mkdir()  # noqa: ASYNC240 - outside the timed section
    files = LaunchFiles(
        vm_dir / "api.sock", vm_dir / "firecracker.log", vm_dir / "serial.log", vm_dir / "stderr"
    )
    process = FirecrackerProcess(binary, vm_dir.name, files, die_with_parent=False)  # as the server
    began = time.perf_counter()
    await process.spawn()
    try:
        await process.wait_api_ready(time.monotonic() + DEADLINE)
        ready = time.perf_counter()
        async with FirecrackerClient(files.api_socket) as client:
            puts = _api_puts(client, spec, vm_dir)
            if parallel:
                await asyncio.gather(*puts)
            else:
                for put in puts:
                    await put
            configured = time.perf_counter()
            await client.instance_start()
            done = time.perf_counter()
    finally:
        await process.terminate(term_seconds=0)
    return {
        "total": done - began,
        "spawn_to_api_ready": ready - began,
        "configure": configured - ready,
        "instance_start_ack": done - configured,
    }


def bare_run(binary: Path, spec: VmSpec, vm_dir: Path) -> dict[str, float]:
    vm_dir.mkdir()
    # Not part of the bare launch's time (only reported): creating the files it starts with, which
    # Clawpot's start does inside its own time.
    setup_began = time.perf_counter()
    log = vm_dir / "firecracker.log"
    log.touch()
    config = models.ConfigFile(
        boot_source=models.BootSource(kernel_image_path=spec.kernel, boot_args=spec.boot_args),
        drives=tuple(
            models.Drive(
                drive_id=d.drive_id, path_on_host=d.path, is_root_device=False, is_read_only=d.read_only
            )
            for d in spec.drives
        ),
        machine_config=models.MachineConfiguration(vcpu_count=spec.vcpus, mem_size_mib=spec.memory_mib),
        vsock=models.Vsock(guest_cid=3, uds_path=vm_dir / "vsock.sock"),
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
        file_setup = began - setup_began
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=serial, stderr=subprocess.STDOUT)
    try:
        with open(log, "rb") as reader:
            seen = b""
            while STARTED_LINE not in seen:
                if proc.poll() is not None:
                    raise RuntimeError(f"bare firecracker exited with {proc.returncode}; see {log}")
                if time.perf_counter() - began > DEADLINE:
                    raise RuntimeError(f"bare firecracker did not start within {DEADLINE}s")
                seen = seen[-200:] + reader.read()
                if STARTED_LINE not in seen:
                    time.sleep(POLL)
        return {"total": time.perf_counter() - began, "file_setup_not_counted": file_setup}
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
    steps_log.setLevel(logging.DEBUG)
    steps_log.propagate = False
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
    results: dict[str, list[dict[str, float]]] = {name: [] for name in CONTENDERS}
    # The VM directories go where the server keeps VMs (the data directory), not in /tmp: a start
    # creates five files, and on the build hosts a create in /tmp costs ~15x one there (measured).
    paths.data_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fcbench-", dir=paths.data_dir()) as tmp:
        for run in range(args.runs):
            # Rotate who goes first, so nobody always runs right after a VM was killed.
            order = CONTENDERS[run % len(CONTENDERS) :] + CONTENDERS[: run % len(CONTENDERS)]
            for which in order:
                vm_dir = Path(tmp) / f"{which.replace('_', '-')}-{run}"  # firecracker ids: no "_"
                if which.startswith("clawpot"):
                    sample = await clawpot_run(binary, spec, vm_dir, die_with_parent=which != "clawpot")
                elif which == "bare_config_file":
                    sample = bare_run(binary, spec, vm_dir)
                else:
                    sample = await api_run(binary, spec, vm_dir, parallel=which == "api_parallel")
                results[which].append(sample)
    bare_median = statistics.median(r["total"] for r in results["bare_config_file"])
    # For reading the result, not the criterion: the bare launch with its file creation counted too.
    bare_with_files = statistics.median(
        r["total"] + r["file_setup_not_counted"] for r in results["bare_config_file"]
    )
    contenders: dict[str, Any] = {}
    for name, samples in results.items():
        phases = [key for key in samples[0] if key != "total"]
        median = statistics.median(r["total"] for r in samples)
        contenders[name] = summarize([r["total"] for r in samples]) | {
            "ratio_to_bare": round(median / bare_median, 3),
            "ratio_to_bare_with_its_file_setup": round(median / bare_with_files, 3),
        }
        if phases:
            contenders[name]["phases_median_ms"] = {
                phase: round(statistics.median(r[phase] for r in samples) * 1000, 2) for phase in phases
            }
    result = {
        "benchmark": "firecracker start: spawn -> microVM started (InstanceStart acknowledged)",
        "runs": args.runs,
        "firecracker": firecracker_version(binary),
        "host": {
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "python": platform.python_version(),
            "loadavg_1m_at_end": round(os.getloadavg()[0], 2),
        },
        "guest": {"vcpus": args.vcpus, "memory_mib": args.memory, "kernel_bytes": args.kernel.stat().st_size},
        **contenders,
        "clawpot_minus_bare_median_ms": round(contenders["clawpot"]["median_ms"] - bare_median * 1000, 2),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
