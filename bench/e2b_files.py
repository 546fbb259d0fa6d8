"""What the E2B front door costs a file transfer: a 1 MiB write and a 1 MiB read through the real ``e2b``
SDK against the same through Clawpot's gRPC API (``clawpot cp``'s calls), same VM, same run.

    .venv/bin/python bench/e2b_files.py [--runs 15] [--size-kib 1024]

As root. One ``clawpot-server`` with ``--e2b-listen`` runs in a network namespace this script creates
and deletes (tests/integration/e2b_harness.py), one QEMU VM made with ``Sandbox.create`` from this
tree's root image. Runs
alternate, so every variant sees the same machine load:

- ``sdk_write``: ``sbx.files.write(path, data)`` (multipart POST /files → agent ``put`` in place);
- ``grpc_write``: ``UploadFile`` over the server's unix socket in 64 KiB chunks (the CLI's stream);
- ``sdk_read``: ``sbx.files.read(path, format="bytes")`` (GET /files, gzip as the SDK's httpx asks);
- ``grpc_read``: ``DownloadFile`` over the unix socket.

The SDK talks TCP and the server's E2B listener is a unix socket inside the namespace, so the SDK's
bytes cross a loopback TCP relay (tests/support/tcp_to_unix.py, one extra copy each way); ``relay_rtt``
(a GET /health through it) says what that hop costs a call. Prints one JSON document (milliseconds).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "integration")]

import grpc  # noqa: E402
import httpx  # noqa: E402
from e2b import Sandbox  # noqa: E402
from e2b_harness import e2b_server  # noqa: E402
from support.tree_assets import tree_assets  # noqa: E402

from clawpot import paths  # noqa: E402
from clawpot.v1 import vm_pb2, vm_pb2_grpc  # noqa: E402

CHUNK = 64 * 1024


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "median_ms": round(statistics.median(ordered), 2),
        "min_ms": round(ordered[0], 2),
        "p90_ms": round(ordered[int(0.9 * (len(ordered) - 1))], 2),
    }


def upload_requests(vm_id: str, path: str, data: bytes) -> Iterator[vm_pb2.UploadFileRequest]:
    yield vm_pb2.UploadFileRequest(header=vm_pb2.UploadHeader(vm_id=vm_id, path=path, mode=0o644))
    for i in range(0, len(data), CHUNK):
        yield vm_pb2.UploadFileRequest(chunk=data[i : i + CHUNK])


def grpc_read(api: vm_pb2_grpc.VmServiceStub, vm_id: str, path: str) -> bytes:
    out = bytearray()
    for response in api.DownloadFile(vm_pb2.DownloadFileRequest(vm_id=vm_id, path=path)):
        if response.WhichOneof("kind") == "chunk":
            out += response.chunk
    return bytes(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--size-kib", type=int, default=1024)
    args = parser.parse_args()
    data = os.urandom(args.size_kib * 1024)
    samples: dict[str, list[float]] = {k: [] for k in ("sdk_write", "grpc_write", "sdk_read", "grpc_read")}
    relay_rtt: list[float] = []
    with tempfile.TemporaryDirectory(prefix="clawpot-bench-e2b-") as tmp:
        workdir = Path(tmp)
        (workdir / "assets").mkdir()
        # This tree's root image (its agent, the `user` account), as the integration tests take it.
        assets = tree_assets(workdir / "assets", paths.assets_dir() / "vmlinux")
        boot_started = time.perf_counter()
        with e2b_server(workdir, assets) as (server, endpoint):
            sbx = Sandbox.create(**endpoint.opts())
            create_ms = (time.perf_counter() - boot_started) * 1000
            channel = grpc.insecure_channel(server.url)
            api = vm_pb2_grpc.VmServiceStub(channel)
            health = httpx.Client(base_url=endpoint.url, headers={"E2b-Sandbox-Id": sbx.sandbox_id})
            # Warm both paths (first-call costs: connections, the guest's page cache, TCG translation).
            sbx.files.write("/tmp/warm", data)
            api.UploadFile(upload_requests(sbx.sandbox_id, "/tmp/warm", data))
            sbx.files.read("/tmp/warm", format="bytes")
            grpc_read(api, sbx.sandbox_id, "/tmp/warm")
            got: dict[str, bytes] = {}
            for _ in range(args.runs):
                samples["sdk_write"].append(timed(lambda: sbx.files.write("/tmp/sdk.bin", data)))
                samples["grpc_write"].append(
                    timed(lambda: api.UploadFile(upload_requests(sbx.sandbox_id, "/tmp/grpc.bin", data)))
                )
                got.clear()
                samples["sdk_read"].append(
                    timed(lambda: got.update(sdk=bytes(sbx.files.read("/tmp/sdk.bin", format="bytes"))))
                )
                samples["grpc_read"].append(
                    timed(lambda: got.update(grpc=grpc_read(api, sbx.sandbox_id, "/tmp/grpc.bin")))
                )
                if got["sdk"] != data or got["grpc"] != data:
                    raise SystemExit("a transfer returned different bytes")
                relay_rtt.append(timed(lambda: health.get("/health")))
            sbx.kill()
            channel.close()
            health.close()
    result = {
        "benchmark": "e2b_files",
        "host": platform.node(),
        "python": platform.python_version(),
        "size_bytes": len(data),
        "runs": args.runs,
        "setup_ms": round(create_ms, 1),
        **{name: summary(values) for name, values in samples.items()},
        "relay_rtt": summary(relay_rtt),
        "ratio_write_sdk_over_grpc": round(
            statistics.median(samples["sdk_write"]) / statistics.median(samples["grpc_write"]), 2
        ),
        "ratio_read_sdk_over_grpc": round(
            statistics.median(samples["sdk_read"]) / statistics.median(samples["grpc_read"]), 2
        ),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
