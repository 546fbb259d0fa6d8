"""Snapshots, fork and the warm pool (QEMU, TCG by default): restore, pause + resume, memory of clones,
hand-outs from the pool and forks through a real server.

    .venv/bin/python bench/snapshot.py [--parts vmm,api] [--vms 10] [--restores 8] [--pauses 100]
        [--memory 256] [--pool 2] [--handouts 20] [--forks 5] [--pool-states paused,running]

In one run, with baselines from the same run, the API part (``bench/snapshot_api.py``: a real
``clawpot-server --pool`` in its own network namespace, over gRPC):

- (a) ``CreateVm`` served from the warm pool, against cold creates; for each ``--pool-states``;
- (c) ``ForkVm`` of a running VM (one copy) to its agent answering; target <= 500 ms;
- (d) ``PauseVm`` + ``ResumeVm`` through the API, against two ``GetVm``; target <= 5 ms;

and the VMM part:

- cold boot → agent ready (``Vm.start()``), for each of ``--vms`` cold VMs booted one after another,
  and the cost of guest RAM being a shared memfd (what makes every VM snapshot-able): ``--anon`` cold
  VMs booted with anonymous RAM instead (the boot recipe with its command-line step swapped), boot
  time and PSS compared;
- (b) restore → agent answering, through ``QemuBackend.restore`` (the ``QEMU_RESTORE`` recipe: verify,
  copy the writable layer, spawn, load, cont) against a bare restore of the same snapshot: the same
  qemu argv, the writable layer copied the same way, driven by raw QMP (``qemu.qmp``) with nothing
  else. Alternated, the first of each left out (cold caches; our first one also hashes the files);
  target: ours <= 1.3 x bare;
- (d) ``pause()`` + ``resume()`` through the backend (QMP stop + cont); target <= 5 ms;
- (e) host memory of ``--vms`` clones restored from one snapshot (each answered its agent once)
  against ``--vms`` cold VMs: PSS of every QEMU (``/proc/PID/smaps_rollup``) plus, for clones, the
  page cache of the snapshot's memory file (``fincore``; counts pages the PSS already shares out, so
  the clones' figure is an upper bound); target <= 0.3 x.

Prints one JSON document.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import snapshot_api
from qemu.qmp import QMPClient

from clawpot import paths
from clawpot.agent_client import wait_ready
from clawpot.agent_client.endpoints import SerialSocketEndpoint
from clawpot.vm.config import VmConfig
from clawpot.vm.handle import Vm
from clawpot.vmm.qemu.backend import QemuBackend, find_qemu
from clawpot.vmm.qemu.boot import BUILD_COMMAND, QEMU_BOOT
from clawpot.vmm.qemu.cmdline import Accel, QemuFiles, RamBacking, build_command
from clawpot.vmm.qemu.process import QemuProcess
from clawpot.vmm.snapshot import MEMORY_NAME, STATE_NAME, Snapshot, copy_sparse, read_manifest
from clawpot.vmm.steps import Step

READY_TIMEOUT = 120.0
QEMU = find_qemu() or "qemu-system-x86_64"


def pss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no Pss in /proc/{pid}/smaps_rollup")


def page_cache_mib(path: Path) -> float:
    out = subprocess.run(
        ["fincore", "--bytes", "--raw", "--noheadings", "--output", "RES", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout.split()[0]) / (1024 * 1024)


async def build_with_anonymous_ram(qemu: QemuProcess) -> None:
    """The usual command line minus the memfd memory backend: guest RAM anonymous, as before."""
    qemu.build_command()
    assert qemu.argv is not None
    argv = list(qemu.argv)
    at = argv.index("-M")
    argv[at + 1] = "microvm"
    at = next(i for i, arg in enumerate(argv) if arg.startswith("memory-backend-memfd"))
    del argv[at - 1 : at + 1]
    qemu.argv = argv


ANONYMOUS_RAM_BOOT = QEMU_BOOT.replace(
    BUILD_COMMAND, Step("build the command line (anonymous RAM)", build_with_anonymous_ram)
)


async def cold_anonymous(args: argparse.Namespace, root: Path) -> dict[str, object]:
    backend = QemuBackend(QEMU, accel=Accel.TCG, vsock=False, recipe=ANONYMOUS_RAM_BOOT)
    config = VmConfig(args.kernel, args.rootfs, memory_mib=args.memory, ready_timeout=READY_TIMEOUT)
    boots, pss = [], []
    for _ in range(args.anon):
        vm = Vm(config, backend, root=root / "anon")
        began = time.perf_counter()
        await vm.start()
        boots.append(time.perf_counter() - began)
        await asyncio.sleep(args.idle)
        assert vm.vmm is not None and vm.vmm.pid is not None
        pss.append(round(pss_mib(vm.vmm.pid), 1))
        await vm.stop(grace=0)
    return {"boot_to_agent": summary(boots), "pss_mib_each": pss}


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "n": len(ordered),
        "p50_ms": round(statistics.median(ordered) * 1000, 2),
        "p99_ms": round(ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))] * 1000, 2),
        "min_ms": round(ordered[0] * 1000, 2),
        "max_ms": round(ordered[-1] * 1000, 2),
    }


async def restore_ours(backend: QemuBackend, snap: Path, vm_dir: Path) -> tuple[float, QemuProcess]:
    began = time.perf_counter()
    process = backend.restore(snap, vm_dir)
    await process.start()
    assert process.agent_endpoint is not None
    agent = await wait_ready(process.agent_endpoint, 30)
    elapsed = time.perf_counter() - began
    await agent.close()
    return elapsed, process


def _prepare_bare(snap: Path, vm_dir: Path) -> list[str]:
    """The restore argv, the writable layer copied (as ours does), the console FIFOs."""
    manifest = read_manifest(snap)
    spec = Snapshot(snap, manifest).spec_for(vm_dir)
    vm_dir.mkdir(parents=True)
    for drive in manifest.spec.drives:
        if not drive.read_only and drive.file is not None:
            copy_sparse(snap / drive.file, vm_dir / drive.path)
    files = QemuFiles.in_dir(vm_dir)
    for fifo in files.console_fifos:
        os.mkfifo(fifo)
    return build_command(
        spec, files, Accel(manifest.backend_options.get("accel", "tcg")), binary=QEMU,
        ram=RamBacking(snap / MEMORY_NAME), incoming=True,
    )  # fmt: skip


async def restore_bare(snap: Path, vm_dir: Path) -> tuple[float, asyncio.subprocess.Process]:
    """The same snapshot restored with nothing but the argv, a disk copy and raw QMP."""
    began = time.perf_counter()
    argv = _prepare_bare(snap, vm_dir)
    files = QemuFiles.in_dir(vm_dir)
    console = os.open(files.console_fifos[0], os.O_RDWR | os.O_NONBLOCK)  # keeps QEMU's writes flowing
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    client = QMPClient("bench")
    while True:
        try:
            await client.connect(str(files.qmp_socket))
            break
        except Exception:
            await asyncio.sleep(0.001)
    caps = {"capabilities": [{"capability": "x-ignore-shared", "state": True}]}
    await client.execute("migrate-set-capabilities", caps)
    fd = os.open(snap / STATE_NAME, os.O_RDONLY)
    client.send_fd_scm(fd)
    await client.execute("getfd", {"fdname": "in"})
    os.close(fd)
    await client.execute("migrate-incoming", {"uri": "fd:in"})
    while (await client.execute("query-status"))["status"] != "paused":  # type: ignore[index]  # noqa: ASYNC110 - polled as ours is
        await asyncio.sleep(0.001)
    await client.execute("cont")
    await client.disconnect()
    agent = await wait_ready(SerialSocketEndpoint(files.agent_socket), 30)
    elapsed = time.perf_counter() - began
    await agent.close()
    os.close(console)
    return elapsed, proc


async def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--vms", type=int, default=10, help="cold VMs and clones for (e)")
    parser.add_argument("--restores", type=int, default=8, help="restores of each kind for (b)")
    parser.add_argument("--pauses", type=int, default=100)
    parser.add_argument("--anon", type=int, default=3, help="cold VMs with anonymous RAM (baseline)")
    parser.add_argument("--memory", type=int, default=256)
    parser.add_argument("--idle", type=float, default=5.0, help="seconds before memory is read")
    parser.add_argument("--kernel", type=Path, default=paths.assets_dir() / "vmlinux")
    parser.add_argument("--rootfs", type=Path, default=paths.assets_dir() / "rootfs.ext4")
    parser.add_argument("--parts", default="vmm,api", help="vmm (b, d, e), api (a, c, d via the API)")
    parser.add_argument("--pool", type=int, default=2, help="warm pool VMs (API part)")
    parser.add_argument("--handouts", type=int, default=20, help="CreateVm served from the pool")
    parser.add_argument("--cold", type=int, default=2, help="cold CreateVm (the baseline of (a))")
    parser.add_argument("--forks", type=int, default=5)
    parser.add_argument("--settle", type=float, default=1.0, help="idle seconds before each sample")
    parser.add_argument("--pool-states", default="paused,running", help="how pool VMs wait")
    args = parser.parse_args()
    args.pool_states = [s for s in args.pool_states.split(",") if s]
    parts = set(args.parts.split(","))
    qemu = find_qemu()
    if qemu is None:
        print("bench/snapshot.py: qemu-system-x86_64 not found", file=sys.stderr)
        return 2
    backend = QemuBackend(qemu, accel=Accel.TCG, vsock=False)
    config = VmConfig(args.kernel, args.rootfs, memory_mib=args.memory, ready_timeout=READY_TIMEOUT)
    result: dict[str, object] = {
        "benchmark": "QEMU snapshots, fork and the warm pool (issue 12: a-e)",
        "accel": "tcg",
        "memory_mib": args.memory,
        "host": {"kernel": platform.release(), "cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0]},
    }
    if "api" in parts:
        api_root = Path(tempfile.mkdtemp(prefix="cp-snapa-"))
        try:
            result["api"] = await asyncio.to_thread(
                snapshot_api.run, args, args.kernel, args.rootfs, api_root
            )
        finally:
            shutil.rmtree(api_root, ignore_errors=True)
    if "vmm" not in parts:
        print(json.dumps(result, indent=2))
        return 0
    root = Path(tempfile.mkdtemp(prefix="cp-snapb-"))
    cold: list[Vm] = []
    clones: list[QemuProcess] = []
    try:
        # -- cold VMs: boot times, and the template -------------------------------------------------
        boots = []
        for index in range(args.vms):
            vm = Vm(config, backend, root=root / "cold")
            began = time.perf_counter()
            await vm.start()
            boots.append(time.perf_counter() - began)
            cold.append(vm)
            print(f"cold VM {index + 1}/{args.vms}: agent ready in {boots[-1]:.2f} s", file=sys.stderr)
        result["cold_boot_to_agent"] = summary(boots)
        if args.anon:
            result["cold_anonymous_ram_baseline"] = await cold_anonymous(args, root)
        template = cold[0]
        assert isinstance(template.vmm, QemuProcess) and template.agent is not None
        await template.agent.run(["true"])

        # -- (d) pause + resume ----------------------------------------------------------------------
        rounds = []
        for _ in range(args.pauses):
            began = time.perf_counter()
            await template.vmm.pause()
            await template.vmm.resume()
            rounds.append(time.perf_counter() - began)
        pause_stats = summary(rounds)
        result["d_pause_resume"] = {**pause_stats, "target_ms": 5.0, "met": pause_stats["p50_ms"] <= 5.0}

        # -- the snapshot ----------------------------------------------------------------------------
        snap = root / "snapshots" / "template"
        began = time.perf_counter()
        await template.vmm.pause()
        paused = time.perf_counter()
        writer = await template.vmm.capture(snap)
        captured = time.perf_counter()
        await template.vmm.resume()
        resumed = time.perf_counter()
        await asyncio.to_thread(template.vmm.seal, writer)
        sealed = time.perf_counter()
        result["snapshot"] = {
            "paused_ms": round((resumed - began) * 1000, 1),
            "capture_ms": round((captured - paused) * 1000, 1),
            "seal_after_resume_ms": round((sealed - resumed) * 1000, 1),
            "files": {
                p.name: {"size": p.stat().st_size, "allocated": p.stat().st_blocks * 512}
                for p in snap.iterdir()
            },
        }

        # -- (b) restore → agent answering: ours vs bare ---------------------------------------------
        ours, bare = [], []
        first_ours = 0.0
        for index in range(args.restores + 1):
            elapsed, process = await restore_ours(backend, snap, root / "r" / f"o{index}")
            await process.kill()
            if index == 0:
                first_ours = elapsed
            else:
                ours.append(elapsed)
            elapsed_bare, proc = await restore_bare(snap, root / "r" / f"b{index}")
            proc.kill()
            await proc.wait()
            if index > 0:
                bare.append(elapsed_bare)
            shutil.rmtree(root / "r")
        ratio = statistics.median(ours) / statistics.median(bare)
        result["b_restore_to_agent"] = {
            "clawpot_backend": summary(ours),
            "bare_qemu_incoming": summary(bare),
            "first_restore_with_digest_check_ms": round(first_ours * 1000, 1),
            "ratio_p50": round(ratio, 3),
            "target_ratio": 1.3,
            "met": ratio <= 1.3,
            "cold_boot_p50_ms": result["cold_boot_to_agent"]["p50_ms"],  # type: ignore[index]
        }

        # -- (e) memory: clones vs cold VMs ----------------------------------------------------------
        for index in range(args.vms):
            _, process = await restore_ours(backend, snap, root / "clones" / f"c{index}")
            clones.append(process)
        await asyncio.sleep(args.idle)
        cold_pss = [pss_mib(vm.vmm.pid) for vm in cold if vm.vmm is not None and vm.vmm.pid is not None]
        result["cold_memfd_ram_pss_mib_each"] = [round(v, 1) for v in cold_pss]
        clone_pss = [pss_mib(p.pid) for p in clones if p.pid is not None]
        cache = page_cache_mib(snap / MEMORY_NAME)
        cold_total, clones_total = sum(cold_pss), sum(clone_pss) + cache
        result["e_memory"] = {
            "vms": args.vms,
            "cold_pss_mib_each": [round(v, 1) for v in cold_pss],
            "cold_total_mib": round(cold_total, 1),
            "clone_pss_mib_each": [round(v, 1) for v in clone_pss],
            "snapshot_page_cache_mib": round(cache, 1),
            "clones_total_mib": round(clones_total, 1),
            "per_clone_mib": round(clones_total / len(clone_pss), 1),
            "per_cold_vm_mib": round(cold_total / len(cold_pss), 1),
            "ratio": round(clones_total / cold_total, 3),
            "target_ratio": 0.3,
            "met": clones_total / cold_total <= 0.3,
        }
    finally:
        for process in clones:
            await process.kill()
        await asyncio.gather(*(vm.stop(grace=0) for vm in cold), return_exceptions=True)
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
