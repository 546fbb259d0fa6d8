"""What the E2B front door costs a call: the real ``e2b`` SDK against the same operation through Clawpot's
gRPC API, on one real VM, in one run.

    .venv/bin/python bench/e2b_calls.py [--runs 50] [--fork-runs 5] [--data-dir DIR]

Starts a real ``clawpot-server`` (QEMU, ``--no-network``: no bridge, TAP or NAT is made, so it runs
outside a namespace), with gRPC on a unix socket (the CLI's path as root) and E2B on loopback TCP
(the SDK's only path), boots one VM with ``Sandbox.create`` and times, alternating so both sides see the
same machine load:

- ``get``: ``Sandbox.get_info`` against ``GetVm``;
- ``list``: ``Sandbox.list(...).next_items()`` against ``ListVms``;
- ``set_timeout``: ``Sandbox.set_timeout`` against ``SetVmTimeout``;
- ``exec_true``: ``sandbox.commands.run("true")`` against ``Exec`` of ``true``;
- ``write_1mib`` / ``read_1mib``: ``sandbox.files.write/read`` of 1 MiB against ``UploadFile`` /
  ``DownloadFile``;
- ``snapshot_and_delete`` (``--fork-runs``): ``create_snapshot`` + ``Sandbox.delete_snapshot`` against
  ``SnapshotVm`` + ``DeleteSnapshot``. Fork and restores need a network (the copy gets its own
  address): bench/e2b_fork.py.

An SDK operation the server does not serve yet (envd still being built) is reported with its error
instead of numbers. Prints one JSON document (median and p99 in milliseconds per call).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
from e2b import Sandbox

from clawpot import paths
from clawpot.v1 import vm_pb2, vm_pb2_grpc

MIB = b"x" * (1 << 20)


def summarize(samples: list[float]) -> dict[str, Any]:
    ordered = sorted(samples)
    p99 = ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]
    return {"median_ms": round(statistics.median(ordered) * 1000, 3), "p99_ms": round(p99 * 1000, 3)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def server(data_dir: Path, work: Path) -> Iterator[tuple[str, str, str]]:
    """(gRPC url, E2B url, API key) of a server started here and stopped (with its VMs) at the end."""
    sock = work / "grpc.sock"
    port = free_port()
    argv = [
        str(Path(sys.executable).parent / "clawpot-server"),
        "--listen",
        f"unix:{sock}",
        "--data-dir",
        str(data_dir),
        "--vmm",
        "qemu",
        "--no-network",
        "--stop-vms-on-exit",
        "--e2b-listen",
        f"127.0.0.1:{port}",
    ]
    log = (work / "server.log").open("wb")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not (sock.exists() and (data_dir / "api-token").exists()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"clawpot-server did not start; see {work / 'server.log'}")
            time.sleep(0.1)
        time.sleep(0.5)  # the E2B listener starts with the gRPC one
        yield f"unix:{sock}", f"http://127.0.0.1:{port}", (data_dir / "api-token").read_text().strip()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def grpc_exec_true(api: vm_pb2_grpc.VmServiceStub, vm_id: str) -> None:
    start = vm_pb2.ExecRequest(start=vm_pb2.ExecStart(vm_id=vm_id, argv=["true"]))
    for reply in api.Exec(iter([start])):
        if reply.HasField("exit"):
            break


def grpc_upload(api: vm_pb2_grpc.VmServiceStub, vm_id: str, path: str) -> None:
    header = vm_pb2.UploadFileRequest(header=vm_pb2.UploadHeader(vm_id=vm_id, path=path))
    chunks = [vm_pb2.UploadFileRequest(chunk=MIB[i : i + 65536]) for i in range(0, len(MIB), 65536)]
    api.UploadFile(iter([header, *chunks]))


def grpc_download(api: vm_pb2_grpc.VmServiceStub, vm_id: str, path: str) -> None:
    size = sum(len(r.chunk) for r in api.DownloadFile(vm_pb2.DownloadFileRequest(vm_id=vm_id, path=path)))
    assert size == len(MIB), size


def measure(runs: int, pairs: dict[str, tuple[Callable[[], object], Callable[[], object]]]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name, (sdk_call, grpc_call) in pairs.items():
        try:
            sdk_call()  # warm up, and find out whether the SDK side is served at all
        except Exception as exc:
            results[name] = {"sdk": f"unavailable: {type(exc).__name__}: {str(exc)[:120]}"}
            grpc_call()
            samples = []
            for _ in range(runs):
                t0 = time.perf_counter()
                grpc_call()
                samples.append(time.perf_counter() - t0)
            results[name]["grpc"] = summarize(samples)
            continue
        grpc_call()
        sdk_samples, grpc_samples = [], []
        for _ in range(runs):
            t0 = time.perf_counter()
            sdk_call()
            t1 = time.perf_counter()
            grpc_call()
            t2 = time.perf_counter()
            sdk_samples.append(t1 - t0)
            grpc_samples.append(t2 - t1)
        sdk, base = summarize(sdk_samples), summarize(grpc_samples)
        results[name] = {
            "sdk": sdk,
            "grpc": base,
            "sdk_over_grpc_median": round(sdk["median_ms"] / base["median_ms"], 2)
            if base["median_ms"]
            else None,
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--fork-runs", type=int, default=5, help="runs of snapshot + delete (slower)")
    parser.add_argument("--data-dir", type=Path, default=None, help="default: a temporary directory")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="e2b-bench-", dir="/tmp"))
    data_dir = args.data_dir or work / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    assets = data_dir / "assets"
    if not assets.exists():
        assets.symlink_to(paths.assets_dir(), target_is_directory=True)
    try:
        with server(data_dir, work) as (grpc_url, e2b_url, key), grpc.insecure_channel(grpc_url) as channel:
            api = vm_pb2_grpc.VmServiceStub(channel)
            opts: dict[str, Any] = {"api_key": key, "api_url": e2b_url, "sandbox_url": e2b_url}
            t0 = time.perf_counter()
            sbx = Sandbox.create(timeout=3600, request_timeout=180, **opts)
            create_s = time.perf_counter() - t0
            vm_id = sbx.sandbox_id
            grpc_upload(api, vm_id, "/root/grpc.bin")

            def sdk_read() -> None:
                assert len(sbx.files.read("/root/sdk.bin", format="bytes")) == len(MIB)

            pairs: dict[str, tuple[Callable[[], object], Callable[[], object]]] = {
                "get": (
                    lambda: Sandbox.get_info(vm_id, **opts),
                    lambda: api.GetVm(vm_pb2.GetVmRequest(id=vm_id)),
                ),
                "list": (
                    lambda: Sandbox.list(**opts).next_items(),
                    lambda: api.ListVms(vm_pb2.ListVmsRequest()),
                ),
                "set_timeout": (
                    lambda: sbx.set_timeout(3600),
                    lambda: api.SetVmTimeout(vm_pb2.SetVmTimeoutRequest(id=vm_id, timeout_seconds=3600)),
                ),
                "exec_true": (lambda: sbx.commands.run("true"), lambda: grpc_exec_true(api, vm_id)),
                "write_1mib": (
                    lambda: sbx.files.write("/root/sdk.bin", MIB),
                    lambda: grpc_upload(api, vm_id, "/root/grpc.bin"),
                ),
                "read_1mib": (sdk_read, lambda: grpc_download(api, vm_id, "/root/grpc.bin")),
            }
            results = measure(args.runs, pairs)

            def sdk_snapshot() -> None:
                assert Sandbox.delete_snapshot(sbx.create_snapshot().snapshot_id, **opts)

            def grpc_snapshot() -> None:
                api.SnapshotVm(vm_pb2.SnapshotVmRequest(vm_id=vm_id, name="bench-grpc"))
                api.DeleteSnapshot(vm_pb2.DeleteSnapshotRequest(name="bench-grpc"))

            slow = {
                "snapshot_and_delete": (sdk_snapshot, grpc_snapshot),
            }
            results |= measure(args.fork_runs, slow)
            sbx.kill()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        json.dumps(
            {
                "bench": "e2b_calls",
                "host": platform.node(),
                "cpus": os.cpu_count(),
                "runs": args.runs,
                "fork_runs": args.fork_runs,
                "sandbox_create_s": round(create_s, 2),
                "calls": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
