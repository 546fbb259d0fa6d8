"""Fork and snapshots through the E2B SDK against the same through Clawpot's gRPC API, in one run.

    .venv/bin/python bench/e2b_fork.py [--runs 5]

One ``clawpot-server`` (``--e2b-listen`` on a unix socket, relayed to a loopback TCP port for the SDK)
in a network namespace this script creates and deletes (a restore gives the copy its own address, so
the server runs with networking); one VM (QEMU/TCG here) made by ``Sandbox.create``, with the root
image this tree builds. Samples alternate between the SDK and gRPC, so both see the same load:

- ``fork_and_kill``: ``sbx.fork()`` + ``kill`` of the copy, against ``ForkVm`` + ``DeleteVm``;
- ``snapshot_and_delete``: ``sbx.create_snapshot()`` + ``Sandbox.delete_snapshot``, against
  ``SnapshotVm`` + ``DeleteSnapshot``;
- ``create_from_snapshot_and_kill``: ``Sandbox.create(snapshot_id)`` + ``kill``, against ``CreateVm``
  with ``from_snapshot`` + ``DeleteVm`` (one snapshot, taken before).

Prints one JSON document (median, min, max in ms).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# The harnesses live with the tests (tests/support, tests/integration): the product ships none.
sys.path[:0] = [
    str(Path(__file__).resolve().parent.parent / "tests"),
    str(Path(__file__).resolve().parent.parent / "tests" / "integration"),
]

from e2b import Sandbox  # noqa: E402
from e2b_harness import e2b_server  # noqa: E402
from support.tree_assets import tree_assets  # noqa: E402

from clawpot.assets import install  # noqa: E402
from clawpot.v1 import vm_pb2  # noqa: E402


def summarize(samples: list[float]) -> dict[str, float]:
    return {
        "median_ms": round(statistics.median(samples) * 1000, 1),
        "min_ms": round(min(samples) * 1000, 1),
        "max_ms": round(max(samples) * 1000, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="samples per variant")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="clawpot-bench-e2b-fork-") as tmp:
        workdir = Path(tmp)
        assets = tree_assets(workdir, install.installed().kernel)
        with e2b_server(workdir / "srv", assets) as (server, endpoint), server.stub() as stub:
            opts = endpoint.opts()
            sbx = Sandbox.create(timeout=3600, **opts)
            vm_id = sbx.sandbox_id
            snap = sbx.create_snapshot(name="bench-sdk")
            stub.SnapshotVm(vm_pb2.SnapshotVmRequest(vm_id=vm_id, name="bench-grpc"), timeout=120)

            def sdk_fork() -> None:
                (copy,) = sbx.fork(timeout=600)
                assert isinstance(copy, Sandbox), copy
                copy.kill()

            def grpc_fork() -> None:
                (copy,) = stub.ForkVm(vm_pb2.ForkVmRequest(id=vm_id, count=1), timeout=120).vms
                stub.DeleteVm(vm_pb2.DeleteVmRequest(id=copy.id), timeout=60)

            def sdk_snapshot() -> None:
                assert Sandbox.delete_snapshot(sbx.create_snapshot().snapshot_id, **opts)

            def grpc_snapshot() -> None:
                stub.SnapshotVm(vm_pb2.SnapshotVmRequest(vm_id=vm_id, name="bench-tmp"), timeout=120)
                stub.DeleteSnapshot(vm_pb2.DeleteSnapshotRequest(name="bench-tmp"), timeout=60)

            def sdk_restore() -> None:
                Sandbox.create(snap.snapshot_id, timeout=600, **opts).kill()

            def grpc_restore() -> None:
                vm = stub.CreateVm(vm_pb2.CreateVmRequest(from_snapshot="bench-grpc"), timeout=120)
                stub.DeleteVm(vm_pb2.DeleteVmRequest(id=vm.id), timeout=60)

            pairs: dict[str, tuple[Callable[[], object], Callable[[], object]]] = {
                "fork_and_kill": (sdk_fork, grpc_fork),
                "snapshot_and_delete": (sdk_snapshot, grpc_snapshot),
                "create_from_snapshot_and_kill": (sdk_restore, grpc_restore),
            }
            samples: dict[str, dict[str, list[float]]] = {n: {"sdk": [], "grpc": []} for n in pairs}
            for sdk_call, grpc_call in pairs.values():  # warm-up: connections, translation caches
                sdk_call()
                grpc_call()
            for _ in range(args.runs):
                for name, (sdk_call, grpc_call) in pairs.items():
                    for side, call in (("sdk", sdk_call), ("grpc", grpc_call)):
                        t0 = time.perf_counter()
                        call()
                        samples[name][side].append(time.perf_counter() - t0)
            sbx.kill()
    results: dict[str, Any] = {}
    for name, sides in samples.items():
        sdk, base = summarize(sides["sdk"]), summarize(sides["grpc"])
        results[name] = {
            "sdk": sdk,
            "grpc": base,
            "sdk_over_grpc_median": round(sdk["median_ms"] / base["median_ms"], 2),
        }
    print(
        json.dumps(
            {"bench": "e2b_fork", "host": platform.node(), "runs": args.runs, "results": results}, indent=2
        )
    )


if __name__ == "__main__":
    main()
