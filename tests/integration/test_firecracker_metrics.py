"""Firecracker's own metrics through the FIFO, on the real (jailed) firecracker: after InstanceStart a
FlushMetrics makes it write a document, the reader keeps it, and the collector shows it per VM.

The guest is the halting kernel (firecracker_helpers): a real VM that stays in Running on any KVM host.
"""

from __future__ import annotations

import asyncio
import stat
import time
from pathlib import Path

from firecracker_helpers import require_available, write_blank_rootfs, write_halting_kernel
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from clawpot.metrics.collector import NodeCollector, NodeSample, VmSample
from clawpot.vm.state import VmState
from clawpot.vmm.firecracker.backend import FirecrackerBackend
from clawpot.vmm.firecracker.metrics import COUNTERS
from clawpot.vmm.spec import BackendKind, Drive, VmSpec

DEADLINE = 30.0


async def test_flush_metrics_reaches_the_reader_and_the_collector(
    firecracker_bin: Path, tmp_path: Path
) -> None:
    backend = FirecrackerBackend(firecracker_bin)  # jailed: the default
    require_available(backend.capabilities())
    spec = VmSpec(
        kernel=write_halting_kernel(tmp_path / "halt.elf"),
        boot_args="console=ttyS0",
        drives=(Drive("rootfs", write_blank_rootfs(tmp_path / "blank.img"), read_only=True),),
        memory_mib=128,
        agent_channel=False,
    )
    vm_dir = tmp_path / "vm"
    vm_dir.mkdir()
    vmm = backend.prepare(spec, vm_dir)
    try:
        await vmm.start()
        assert vmm.metrics is not None
        assert stat.S_ISFIFO((vm_dir / "metrics.fifo").lstat().st_mode)
        before = vmm.metrics.state.documents
        await vmm.client.flush_metrics()
        deadline = time.monotonic() + DEADLINE
        while vmm.metrics.state.documents <= before and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        state = vmm.metrics.state
        assert state.documents > before, "no metrics document after FlushMetrics"
        assert state.latest is not None and state.rejected == 0
        # Every counter we show is a name of Firecracker's document (v1.12), and the flush was counted.
        missing = [name for name in COUNTERS if name not in state.latest]
        assert missing == []
        assert state.totals["put_api_requests.actions_count"] >= 1

        snap = state.snapshot()
        vm = VmSample(vm_dir.name, BackendKind.FIRECRACKER, VmState.RUNNING, vmm.pid, None, snap)
        registry = CollectorRegistry()
        registry.register(NodeCollector(lambda: NodeSample([vm], None, 0, 0, 0)))
        families = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}
        shown = {
            s.labels["name"]: s.value
            for s in families["clawpot_firecracker_metric"].samples
            if s.labels["id"] == vm_dir.name and s.labels["backend"] == "firecracker"
        }
        assert set(shown) == set(COUNTERS)
        assert shown["put_api_requests.actions_count"] == snap.totals["put_api_requests.actions_count"]
        (age,) = families["clawpot_firecracker_metrics_age_seconds"].samples
        assert 0 <= age.value < DEADLINE
    finally:
        await vmm.kill()
    assert vmm.metrics.state.latest is not None  # kept after the VMM is gone
