"""Running a command through the E2B SDK against the same through Clawpot's gRPC API, in one run.

    .venv/bin/python bench/e2b_exec.py [--runs 30]

One ``clawpot-server`` (``--e2b-listen`` on a unix socket, relayed to a loopback TCP port for the SDK,
which only dials TCP) in a network namespace this script creates and deletes; one VM (QEMU, the
accelerator the host gives: TCG here), made by the SDK's ``Sandbox.create``, with the root image this
tree builds (from the asset cache). Samples alternate between the variants, so all see the same load:

- ``sdk_run_true``: ``sbx.commands.run("true")`` (sync SDK): one Connect server stream; the SDK runs
  every command as ``/bin/bash -l -c CMD`` as the sandbox's default user;
- ``sdk_run_true_as_root``: the same with ``user="root"``;
- ``grpc_exec_bash_login_true``: gRPC ``Exec`` of the same ``/bin/bash -l -c true`` (as root, with the
  agent's environment): the same guest work through the primary API: the difference to
  ``sdk_run_true_as_root`` is the front door's cost;
- ``grpc_exec_true``: gRPC ``Exec`` of ``true`` itself: what Clawpot's own API pays for ``exec true``
  (no login shell, which costs tens of ms under TCG);
- ``sdk_list``: ``sbx.commands.list()`` (unary Connect call, one agent round trip, no process).

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


def grpc_exec(stub: Any, vm_id: str, argv: list[str]) -> None:
    start = vm_pb2.ExecStart(vm_id=vm_id, argv=argv)
    for response in stub.Exec(iter([vm_pb2.ExecRequest(start=start)]), timeout=60):
        if response.HasField("exit"):
            assert response.exit.exit_code == 0, response
            return
    raise AssertionError("no exit status")


def summarize(samples: list[float]) -> dict[str, float]:
    return {
        "median_ms": round(statistics.median(samples) * 1000, 2),
        "min_ms": round(min(samples) * 1000, 2),
        "max_ms": round(max(samples) * 1000, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30, help="samples per variant")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="clawpot-bench-e2b-") as tmp:
        workdir = Path(tmp)
        assets = tree_assets(workdir, install.installed().kernel)
        with e2b_server(workdir / "srv", assets) as (server, endpoint):
            sbx = Sandbox.create(**endpoint.opts())
            with server.stub() as stub:
                variants: dict[str, Callable[[], object]] = {
                    "sdk_run_true": lambda: sbx.commands.run("true"),
                    "sdk_run_true_as_root": lambda: sbx.commands.run("true", user="root"),
                    "grpc_exec_bash_login_true": lambda: grpc_exec(
                        stub, sbx.sandbox_id, ["/bin/bash", "-l", "-c", "true"]
                    ),
                    "grpc_exec_true": lambda: grpc_exec(stub, sbx.sandbox_id, ["true"]),
                    "sdk_list": lambda: sbx.commands.list(),
                }
                for call in variants.values():  # warm-up: first connections, translation caches
                    for _ in range(3):
                        call()
                samples: dict[str, list[float]] = {name: [] for name in variants}
                for _ in range(args.runs):
                    for name, call in variants.items():
                        t0 = time.perf_counter()
                        call()
                        samples[name].append(time.perf_counter() - t0)
            sbx.kill()
    results = {name: summarize(v) for name, v in samples.items()}
    sdk = results["sdk_run_true_as_root"]["median_ms"]
    same = results["grpc_exec_bash_login_true"]["median_ms"]
    print(
        json.dumps(
            {
                "bench": "e2b_exec",
                "host": platform.node(),
                "runs": args.runs,
                "results": results,
                "sdk_overhead_over_grpc_same_command_ms": round(sdk - same, 2),
                "sdk_over_grpc_same_command_ratio": round(sdk / same, 2),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
