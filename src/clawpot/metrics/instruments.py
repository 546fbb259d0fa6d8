"""The metrics updated where things happen. Everything read from state at scrape time is in
``collector`` instead: counting here what the node already knows would be a second truth to keep right.

Names follow Prometheus conventions (``clawpot_`` prefix, ``_total`` counters, ``_seconds``
histograms). Labels are bounded sets (method, status code, origin, pool): per-VM series exist only in
the collector, for VMs that exist, so a churn of VMs never leaves series behind.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)

# Our own registry rather than the library's global one: what /metrics serves is exactly what is
# registered here (plus the process collector the server adds), and tests can build their own.
# No ``*_created`` series next to every counter and histogram: Prometheus does not need them, and they
# double what a scrape carries.
disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped in the library
REGISTRY = CollectorRegistry()
# The server process itself: CPU, memory, open files (process_*).
ProcessCollector(registry=REGISTRY)

# Latency buckets: from a restore's ~0.2 s (or a KVM boot's) to a TCG cold boot's ~5-20 s, and beyond
# for a loaded host.
_CREATE_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 60.0, 120.0)
# Exec start: an agent round trip is ~0.1-0.2 ms under TCG, a reconnect or a loaded host tens of ms.
_EXEC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

RPCS = Counter(
    "clawpot_rpcs",
    "gRPC calls handled, by method and final status code.",
    ("method", "code"),
    registry=REGISTRY,
)
RPC_SECONDS = Histogram(
    "clawpot_rpc_duration_seconds",
    "Time from a gRPC call's arrival to its end (streams: the whole stream), by method.",
    ("method",),
    registry=REGISTRY,
    buckets=_CREATE_BUCKETS,
)
CREATE_SECONDS = Histogram(
    "clawpot_vm_create_seconds",
    "Time from an accepted create to the VM's agent answering, by how it was made (origin).",
    ("origin",),
    registry=REGISTRY,
    buckets=_CREATE_BUCKETS,
)
EXEC_START_SECONDS = Histogram(
    "clawpot_exec_start_seconds",
    "Time from an exec request to the command running in the guest (agent check + start).",
    registry=REGISTRY,
    buckets=_EXEC_BUCKETS,
)
AGENT_RECONNECTS = Counter(
    "clawpot_agent_reconnects",
    "Agent connections the server had to open again (the previous one broke or went silent).",
    registry=REGISTRY,
)
# The warm pool's ready VMs per shape (``1x256``): the pool registers a callback read at scrape time
# (``clawpot.service.pool``) and removes its series when it closes.
POOL_SIZE = Gauge(
    "clawpot_pool_vms",
    "VMs waiting, ready, in a pool.",
    ("pool",),
    registry=REGISTRY,
)
