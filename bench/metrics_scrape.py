"""What a Prometheus scrape of ``/metrics`` costs with 100 VMs, against baselines measured in the same run.

    .venv/bin/python bench/metrics_scrape.py [--vms 100] [--rounds 50]

The VMs: ``--vms`` node records (the real ``NodeVm`` / ``VmRecord`` objects the collector reads,
Running, QEMU) whose VMM PIDs are real ``sleep`` processes started here as stand-ins for VMMs, so the
per-VM reads are the real ones (``/proc/PID/stat`` per VM); and a real ``state.db`` whose
address pool holds ``--vms`` allocations (the pool is read with SQLite at every scrape). No hypervisor
runs: a VMM's /proc files cost the same to read as a sleep's.

Timed, rounds interleaved so every variant sees the same machine load (median and p90, in ms):

- ``empty_registry``: ``generate_latest`` of an empty registry: the floor of any scrape;
- ``no_vms``: our registry (RPC, create and exec metrics, process metrics) with a node of no VMs;
- ``with_vms``: the same with the ``--vms`` VMs: what a scrape costs the server;
- ``http_vms``: a GET of /metrics over loopback from the server's own HTTP listener with the ``--vms``
  VMs, the node sample taken on an event loop running in another thread (as in the server);
- ``with_fc_vms``: the same VMs as Firecracker VMs whose own metrics were read (a ``FirecrackerVmm``
  handle, never started, whose ``MetricsReader`` on a real FIFO holds every name of ``COUNTERS``): what
  the ``clawpot_firecracker_*`` series add to a scrape;
- ``loop_sample_us``: the only part that runs on the server's event loop: taking the node sample
  (``loop_sample_fc_us``: of the Firecracker VMs, copying their totals).

Prints one JSON document.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import types
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from prometheus_client import CollectorRegistry, generate_latest

from clawpot.metrics import instruments
from clawpot.metrics.collector import NodeCollector, on_loop, sample_node
from clawpot.metrics.http import MetricsServer, check_address
from clawpot.network import NetworkConfig, NetworkManager
from clawpot.node.events import EventLog
from clawpot.node.store import VmRecord
from clawpot.node.vms import NodeVm
from clawpot.vm import procfs
from clawpot.vm.state import VmState
from clawpot.vmm.firecracker.handle import FirecrackerVmm
from clawpot.vmm.firecracker.metrics import COUNTERS, METRICS_FIFO_NAME, MetricsReader
from clawpot.vmm.spec import BackendKind, VmSpec


class _StandInFirecracker(FirecrackerVmm):
    """A Firecracker handle never started, whose VMM PID is a stand-in's, with a real metrics reader on
    a FIFO of its own (made on ``loop``) that has read one document naming every counter shown."""

    def __init__(self, vm_dir: Path, pid: int, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(Path("firecracker"), VmSpec(kernel=Path("vmlinux"), boot_args="", drives=()), vm_dir)
        self._pid = pid
        vm_dir.mkdir(exist_ok=True)
        reader = on_loop(loop, lambda: MetricsReader.from_fifo(vm_dir / METRICS_FIFO_NAME), 5)
        reader.state.accept({name: 1.0 for name in COUNTERS}, time.monotonic())
        self.process.metrics = reader

    @property
    def pid(self) -> int | None:
        return self._pid


def _fake_node(
    count: int, pids: list[int], db: Path, *, firecracker: asyncio.AbstractEventLoop | None = None
) -> Any:
    network = NetworkManager(db, NetworkConfig.build(bridge="cp-bench0", subnet="10.77.0.0/24"))
    vms = {}
    for n, pid in enumerate(pids[:count]):
        vm_id = f"bench{n:03d}"
        network.allocator.allocate(vm_id)
        record = VmRecord(
            id=vm_id,
            state=VmState.RUNNING,
            backend=BackendKind.FIRECRACKER if firecracker is not None else BackendKind.QEMU,
            vcpus=1,
            memory_mib=256,
            vm_dir=db.parent / vm_id,
            pid=pid,
            vmm_start_ticks=procfs.start_ticks(pid),
        )
        vms[vm_id] = NodeVm(record, 10.0)
        if firecracker is not None:
            stand_in = _StandInFirecracker(record.vm_dir, pid, firecracker)
            vms[vm_id].vm = cast(Any, types.SimpleNamespace(vmm=stand_in))
    return types.SimpleNamespace(vms=vms, network=network, events=EventLog())


def _time(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def _summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "median_ms": round(statistics.median(ordered), 3),
        "p90_ms": round(ordered[int(len(ordered) * 0.9) - 1], 3),
        "min_ms": round(ordered[0], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vms", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()

    sleepers = [subprocess.Popen(["sleep", "3600"]) for _ in range(args.vms)]
    loop = asyncio.new_event_loop()
    loop_thread = threading.Thread(target=loop.run_forever, daemon=True)
    loop_thread.start()
    try:
        with tempfile.TemporaryDirectory(prefix="cp-bench-") as tmp:
            pids = [p.pid for p in sleepers]
            busy = _fake_node(args.vms, pids, Path(tmp) / "busy.db")
            idle = _fake_node(0, pids, Path(tmp) / "idle.db")
            busy_fc = _fake_node(args.vms, pids, Path(tmp) / "fc.db", firecracker=loop)

            def registry_for(node: Any) -> CollectorRegistry:
                # A registry is a collector too: ours (RPC, create, exec, process) plus the node's.
                registry = CollectorRegistry()
                registry.register(instruments.REGISTRY)
                registry.register(NodeCollector(lambda: sample_node(node)))
                return registry

            empty, no_vms, with_vms = CollectorRegistry(), registry_for(idle), registry_for(busy)
            with_fc_vms = registry_for(busy_fc)
            fc_body = generate_latest(with_fc_vms)
            assert b"clawpot_firecracker_metric_total{" in fc_body or args.vms == 0
            http_registry = CollectorRegistry()
            http_registry.register(instruments.REGISTRY)
            http_registry.register(NodeCollector.of(cast(Any, busy), loop))
            server = MetricsServer(check_address("127.0.0.1:0", None), http_registry)
            url = f"http://127.0.0.1:{server.port}/metrics"

            def http_get() -> bytes:
                with urllib.request.urlopen(url, timeout=10) as reply:
                    return bytes(reply.read())

            body = http_get()  # warm up every path once
            assert f'id="bench{args.vms - 1:03d}"'.encode() in body or args.vms == 0
            variants = ("empty_registry", "no_vms", "with_vms", "with_fc_vms", "http_vms")
            times: dict[str, list[float]] = {name: [] for name in variants}
            sample_us: list[float] = []
            sample_fc_us: list[float] = []
            for _ in range(args.rounds):
                times["empty_registry"].append(_time(lambda: generate_latest(empty)))
                times["no_vms"].append(_time(lambda: generate_latest(no_vms)))
                times["with_vms"].append(_time(lambda: generate_latest(with_vms)))
                times["with_fc_vms"].append(_time(lambda: generate_latest(with_fc_vms)))
                times["http_vms"].append(_time(http_get))
                sample_us.append(_time(lambda: on_loop(loop, lambda: sample_node(busy), 5)) * 1000)
                sample_fc_us.append(_time(lambda: on_loop(loop, lambda: sample_node(busy_fc), 5)) * 1000)
            server.close()
    finally:
        loop.call_soon_threadsafe(loop.stop)
        for proc in sleepers:
            proc.kill()
            proc.wait()

    result = {
        "bench": "metrics_scrape",
        "vm_count": args.vms,
        "rounds": args.rounds,
        "stand_in": "VM records without VMMs; each VM's PID is a real sleep process (real /proc reads); "
        "the address pool in a real state.db",
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "scrape_bytes": len(body),
        "scrape_bytes_fc": len(fc_body),
        **{name: _summary(values) for name, values in times.items()},
        "per_vm_ms": round(
            (statistics.median(times["with_vms"]) - statistics.median(times["no_vms"])) / max(args.vms, 1), 4
        ),
        "loop_sample_us_median": round(statistics.median(sample_us), 1),
        "loop_sample_fc_us_median": round(statistics.median(sample_fc_us), 1),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
