"""What a scrape reads from the node at scrape time: a custom prometheus_client ``Collector``.

Nothing here is updated as VMs change: a scrape takes one sample of the node's state on its event
loop (a list of small tuples: no I/O, microseconds), then does the reading (``/proc`` or cgroup files
of each VM, the address pool in SQLite) in the scrape's own thread, off the event loop, so a scrape
never holds up a VM operation, whatever the number of VMs. ``bench/metrics_scrape.py`` measures it.

Series:
- ``clawpot_vms{state,backend}``: every state and backend, zeros included (stable series).
- ``clawpot_vm_cpu_seconds_total{id,backend}``, ``clawpot_vm_memory_bytes{id,backend}``: per VM whose
  VMM runs (cgroup or /proc, ``clawpot.node.usage``); a deleted VM's series simply stop.
- ``clawpot_firecracker_metric_total{id,backend,name}``, ``clawpot_firecracker_metrics_age_seconds``,
  ``clawpot_firecracker_metrics_documents_total``: per running Firecracker VM once Firecracker flushed
  its own metrics (``clawpot.vmm.firecracker.metrics``: the running totals of ``COUNTERS``; the
  sample copies them on the loop, no I/O).
- ``clawpot_address_pool_addresses``, ``clawpot_address_pool_used``: the VM subnet's pool.
- ``clawpot_event_watchers``, ``clawpot_event_watchers_dropped_total``, ``clawpot_events_total``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from clawpot import limits
from clawpot.node import usage
from clawpot.vm.state import VmState
from clawpot.vmm.firecracker.metrics import MetricsReader, MetricsSnapshot
from clawpot.vmm.spec import BackendKind

if TYPE_CHECKING:
    from clawpot.network import NetworkManager
    from clawpot.node.node import Node

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class VmSample:
    id: str
    backend: BackendKind
    state: VmState
    pid: int | None  # the VMM's, while it runs
    start_ticks: int | None
    firecracker: MetricsSnapshot | None = None  # Firecracker's own metrics, where it runs


@dataclass(frozen=True)
class NodeSample:
    vms: list[VmSample]
    network: NetworkManager | None
    watchers: int
    watchers_dropped: int
    events: int


def sample_node(node: Node) -> NodeSample:
    """The node's state in one step of its event loop (no I/O, no await)."""
    vms = []
    for nvm in node.vms.values():
        rec = nvm.record
        state = VmState.STOPPING if nvm.deleting else rec.state
        vmm = nvm.vm.vmm if nvm.vm is not None else None
        pid = vmm.pid if vmm is not None else rec.pid
        # Firecracker's own metrics reader: a started ``FirecrackerVmm``'s, or an adopted one's.
        reader = getattr(vmm, "metrics", None)
        fc = reader.state.snapshot() if isinstance(reader, MetricsReader) else None
        vms.append(VmSample(rec.id, rec.backend, state, pid, rec.vmm_start_ticks, fc))
    events = node.events
    return NodeSample(
        vms=vms,
        network=node.network,
        watchers=events.watchers,
        watchers_dropped=events.dropped_watchers,
        events=events.issued,
    )


def on_loop(loop: asyncio.AbstractEventLoop, fn: Callable[[], T], timeout: float) -> T:
    """Run ``fn`` on ``loop`` from another thread and wait for its result (directly when already on it)."""
    try:
        if asyncio.get_running_loop() is loop:
            return fn()
    except RuntimeError:
        pass  # no loop in this thread: the usual case, a scrape thread
    future: concurrent.futures.Future[T] = concurrent.futures.Future()

    def run() -> None:
        try:
            future.set_result(fn())
        except BaseException as exc:
            future.set_exception(exc)

    loop.call_soon_threadsafe(run)
    return future.result(timeout)


class NodeCollector(Collector):
    """Reads ``sample()`` at each scrape; ``sample`` must be safe to call from the scrape's thread."""

    def __init__(self, sample: Callable[[], NodeSample]) -> None:
        self._sample = sample

    @classmethod
    def of(cls, node: Node, loop: asyncio.AbstractEventLoop) -> NodeCollector:
        return cls(lambda: on_loop(loop, lambda: sample_node(node), limits.METRICS_SNAPSHOT_TIMEOUT))

    def describe(self) -> Iterator[Metric]:
        return iter(())  # collected only at scrape time: no sample at registration

    def collect(self) -> Iterator[Metric]:
        try:
            sample = self._sample()
        except Exception as exc:  # a wedged loop or a bug: the scrape still gets the other metrics
            log.warning("metrics: cannot sample the node (%s)", exc or type(exc).__name__)
            return
        yield from _vm_counts(sample.vms)
        yield from _vm_usage(sample.vms)
        yield from _firecracker(sample.vms)
        yield from _address_pool(sample.network)
        yield GaugeMetricFamily("clawpot_event_watchers", "WatchVms streams open now.", value=sample.watchers)
        yield CounterMetricFamily(
            "clawpot_event_watchers_dropped",
            "WatchVms streams ended for falling too far behind.",
            value=sample.watchers_dropped,
        )
        yield CounterMetricFamily("clawpot_events", "VM events issued by this server.", value=sample.events)


def _vm_counts(vms: list[VmSample]) -> Iterator[Metric]:
    family = GaugeMetricFamily(
        "clawpot_vms", "VMs on this node, by state and backend.", labels=("state", "backend")
    )
    # The states the API shows (NotStarted is a handle's state before its boot: Starting, as in the API).
    counts = {
        (state, backend): 0
        for state in VmState
        if state is not VmState.NOT_STARTED
        for backend in BackendKind
    }
    for vm in vms:
        state = VmState.STARTING if vm.state is VmState.NOT_STARTED else vm.state
        counts[(state, vm.backend)] += 1
    for (state, backend), count in counts.items():
        family.add_metric((state.value.lower(), backend.value), count)
    yield family


def _vm_usage(vms: list[VmSample]) -> Iterator[Metric]:
    cpu = CounterMetricFamily(
        "clawpot_vm_cpu_seconds",
        "CPU time used by the VM's VMM (its cgroup where it has one, else the process).",
        labels=("id", "backend"),
    )
    memory = GaugeMetricFamily(
        "clawpot_vm_memory_bytes",
        "Memory the VM holds on the host (cgroup memory.current, else the VMM's resident set).",
        labels=("id", "backend"),
    )
    for vm in vms:
        if vm.state not in (VmState.RUNNING, VmState.PAUSED, VmState.STARTING):
            continue
        found = usage.read_usage(vm.id, vm.pid, vm.start_ticks)
        if found is None:
            continue
        cpu.add_metric((vm.id, vm.backend.value), found.cpu_seconds)
        memory.add_metric((vm.id, vm.backend.value), found.memory_bytes)
    yield cpu
    yield memory


def _firecracker(vms: list[VmSample]) -> Iterator[Metric]:
    counters = CounterMetricFamily(
        "clawpot_firecracker_metric",
        "Firecracker's own counters (its metrics document, name = group.name), summed over its flushes.",
        labels=("id", "backend", "name"),
    )
    age = GaugeMetricFamily(
        "clawpot_firecracker_metrics_age_seconds",
        "Seconds since Firecracker's latest metrics document was read (it flushes every 60 s).",
        labels=("id", "backend"),
    )
    documents = CounterMetricFamily(
        "clawpot_firecracker_metrics_documents",
        "Firecracker metrics documents read for the VM.",
        labels=("id", "backend"),
    )
    for vm in vms:
        fc = vm.firecracker
        if fc is None or fc.age is None or vm.state not in (VmState.RUNNING, VmState.PAUSED):
            continue
        labels = (vm.id, vm.backend.value)
        age.add_metric(labels, fc.age)
        documents.add_metric(labels, fc.documents)
        for name, value in sorted(fc.totals.items()):
            counters.add_metric((*labels, name), value)
    yield counters
    yield age
    yield documents


def _address_pool(network: NetworkManager | None) -> Iterator[Metric]:
    if network is None:
        return
    try:
        free = network.allocator.free_count()
    except Exception as exc:  # the database busy or gone: skip these, keep the scrape
        log.warning("metrics: cannot read the address pool (%s)", exc)
        return
    size = network.config.pool_size
    yield GaugeMetricFamily(
        "clawpot_address_pool_addresses", "Addresses the VM subnet can hand out.", value=size
    )
    yield GaugeMetricFamily("clawpot_address_pool_used", "Addresses held by VMs.", value=size - free)
