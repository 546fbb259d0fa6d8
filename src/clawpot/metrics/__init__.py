"""Prometheus metrics of one Clawpot server (``clawpot-server --metrics-listen``), with prometheus_client.

- ``instruments``  the counters, histograms and gauges the code updates as things happen (RPCs,
                   create and exec latency, agent reconnects; the warm pool's ready VMs, read by a
                   callback), in one registry of our own.
- ``collector``    what is read at scrape time instead: VMs by state and backend, address-pool use,
                   event watchers, per-VM CPU and memory (``clawpot.node.usage``), Firecracker's own
                   counters per VM (``clawpot.vmm.firecracker.metrics``).
- ``http``         serves ``/metrics`` (loopback, or TLS off loopback, as the API's TCP listeners).

The gRPC side (an interceptor counting every RPC by method and status) is ``clawpot.server.rpcmetrics``.
"""
