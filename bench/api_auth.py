"""What the API token costs a call: a unary call's latency with and without the token check, in one run.

    .venv/bin/python bench/api_auth.py [--runs 2000]

One gRPC server process-local (grpc.aio, the server's stack) with a stand-in ``ListVms`` that returns an
empty list, so only transport and interceptor are measured. The client is the CLI's own channel code
(``clawpot.cli.connection.open_channel``, a blocking stub) in a thread. Runs alternate, so all variants
see the same machine load:

- ``unix``: the unix-socket listener (no interceptor, no token): the baseline the CLI uses as root;
- ``tcp_plain``: loopback TCP, no interceptor, no token: the old default listener;
- ``tcp_token``: loopback TCP with the token interceptor and the CLI's local-TCP + access-token
  credentials: what every TCP call pays now.

Prints one JSON document (median and p99 in microseconds).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc

from clawpot.cli.connection import open_channel
from clawpot.server.auth import TokenAuthInterceptor
from clawpot.v1 import vm_pb2, vm_pb2_grpc

TOKEN = "b" * 43


class Empty(vm_pb2_grpc.VmServiceServicer):
    async def ListVms(self, request: Any, context: Any) -> vm_pb2.ListVmsResponse:
        return vm_pb2.ListVmsResponse()


async def _serve(ready: threading.Event, stop: asyncio.Event, addresses: dict[str, str], tmp: Path) -> None:
    servers = []
    variants: list[tuple[str, tuple[Any, ...]]] = [
        ("unix", ()),
        ("tcp_plain", ()),
        ("tcp_token", (TokenAuthInterceptor(TOKEN),)),
    ]
    for name, interceptors in variants:
        server = grpc.aio.server(interceptors=interceptors)
        vm_pb2_grpc.add_VmServiceServicer_to_server(Empty(), server)
        if name == "unix":
            addresses[name] = f"unix:{tmp / 'bench.sock'}"
            server.add_insecure_port(addresses[name])
        else:
            addresses[name] = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
        await server.start()
        servers.append(server)
    ready.set()
    await stop.wait()
    for server in servers:
        await server.stop(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=2000)
    args = parser.parse_args()
    os.environ["CLAWPOT_TOKEN"] = TOKEN
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    ready = threading.Event()
    addresses: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        thread = threading.Thread(
            target=loop.run_until_complete, args=(_serve(ready, stop, addresses, Path(tmp)),), daemon=True
        )
        thread.start()
        ready.wait(30)
        stubs = {}
        channels = []
        for name, address in addresses.items():
            channel = grpc.insecure_channel(address) if name == "tcp_plain" else open_channel(address)
            channels.append(channel)
            stubs[name] = vm_pb2_grpc.VmServiceStub(channel)
            for _ in range(50):  # warm up: connection, first-call paths
                stubs[name].ListVms(vm_pb2.ListVmsRequest(), timeout=10)
        samples: dict[str, list[float]] = {name: [] for name in stubs}
        for _ in range(args.runs):
            for name, stub in stubs.items():
                started = time.perf_counter()
                stub.ListVms(vm_pb2.ListVmsRequest(), timeout=10)
                samples[name].append((time.perf_counter() - started) * 1e6)
        for channel in channels:
            channel.close()
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)

    def summary(values: list[float]) -> dict[str, float]:
        ordered = sorted(values)
        return {
            "median_us": round(statistics.median(ordered), 1),
            "p99_us": round(ordered[int(len(ordered) * 0.99) - 1], 1),
        }

    results = {name: summary(values) for name, values in samples.items()}
    base = results["tcp_plain"]["median_us"]
    print(
        json.dumps(
            {
                "benchmark": "unary call latency: unix socket, plain loopback TCP, TCP with the API token",
                "host": {
                    "python": platform.python_version(),
                    "grpc": grpc.__version__,
                    "cpus": os.cpu_count(),
                },
                "runs": args.runs,
                "results": results,
                "token_overhead_vs_tcp_plain_us": round(results["tcp_token"]["median_us"] - base, 1),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
