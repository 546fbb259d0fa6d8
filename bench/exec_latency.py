"""Agent protocol cost: exec round trip of ``true`` and stdout throughput, against a raw socket, in one run.

    .venv/bin/python bench/exec_latency.py [--runs 500] [--mb 200] [--rounds 3]

Both sides run on this host as separate processes behind the same kind of socket (unix stream):

- the real agent (``python -m clawpot.agent --listen-unix``), driven by ``clawpot.agent_client.AgentClient``;
- a raw server (standard library, no framing, no multiplexing, no flow control) that echoes bytes, or
  relays the stdout of ``head -c N /dev/zero`` straight to the socket.

Latency (the runs alternate, so all of them see the same machine load):

- ``exec_true``: ``client.run(["true"])``: OPEN → spawn → INFO, EOFs, END — the number that matters;
- ``raw_echo``: 64 bytes written and read back over a raw socket: the floor of any request/response;
- ``ping``: PING/PONG through the agent's event loop: protocol overhead without a process;
- ``local_spawn_true``: ``true`` spawned and reaped by this process, no socket: the cost of the process.

Throughput: N MB of zeros from ``head -c`` to the client, through the protocol (one exec, stdout events,
credit windows) and through the raw relay; median of ``--rounds``, and the protocol/raw ratio of each
round (its two transfers ran back to back) with its spread. ``--runs 0`` measures throughput only.
Prints one JSON document.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from clawpot.agent.protocol import READY_LINE
from clawpot.agent_client import AgentClient, Output, UnixSocketEndpoint, wait_ready

RAW_SERVER = r"""
import os, socket, subprocess, sys
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(sys.argv[1]); srv.listen(8)
print("ready", flush=True)
while True:
    conn, _ = srv.accept()
    request = b""
    while not request.endswith(b"\n"):
        request += conn.recv(1)
    if request.startswith(b"STREAM "):
        size = request.split()[1].decode()
        child = subprocess.Popen(["head", "-c", size, "/dev/zero"], stdout=subprocess.PIPE)
        while data := os.read(child.stdout.fileno(), 65536):
            conn.sendall(data)
        child.wait()
    else:
        while data := conn.recv(65536):
            conn.sendall(data)
    conn.close()
"""


def summarize(samples: list[float]) -> dict[str, Any]:
    ordered = sorted(samples)

    def rank(q: float) -> float:
        return ordered[max(0, math.ceil(q * len(ordered)) - 1)]  # nearest rank

    return {
        "median_ms": round(statistics.median(ordered) * 1000, 3),
        "p99_ms": round(rank(0.99) * 1000, 3),
        "min_ms": round(ordered[0] * 1000, 3),
        "max_ms": round(ordered[-1] * 1000, 3),
    }


def start(argv: list[str], expect: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    if not line.startswith(expect):
        proc.kill()
        proc.wait()
        raise SystemExit(f"{argv[0]} did not start: {line!r}")
    return proc


async def timed(samples: list[float], coro: Any) -> None:
    t0 = time.perf_counter()
    await coro
    samples.append(time.perf_counter() - t0)


async def raw_round_trip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, payload: bytes) -> None:
    writer.write(payload)
    await writer.drain()
    await reader.readexactly(len(payload))


async def local_true() -> None:
    proc = await asyncio.create_subprocess_exec("true")
    await proc.wait()


async def protocol_stream(client: AgentClient, nbytes: int) -> float:
    t0 = time.perf_counter()
    proc = await client.exec(["head", "-c", str(nbytes), "/dev/zero"], stdin=False)
    received = 0
    async for event in proc:
        if isinstance(event, Output):
            received += len(event.data)
    assert received == nbytes and proc.status is not None and proc.status.ok
    return nbytes / (time.perf_counter() - t0) / 1e6


async def raw_stream(path: Path, nbytes: int) -> float:
    t0 = time.perf_counter()
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(f"STREAM {nbytes}\n".encode())
    received = 0
    while data := await reader.read(256 * 1024):
        received += len(data)
    writer.close()
    assert received == nbytes
    return nbytes / (time.perf_counter() - t0) / 1e6


async def measure(agent_sock: Path, raw_sock: Path, runs: int, nbytes: int, rounds: int) -> dict[str, Any]:
    client = await wait_ready(UnixSocketEndpoint(agent_sock), 10)
    lat = await measure_latency(client, raw_sock, runs) if runs else {}
    throughput: dict[str, list[float]] = {"protocol_stdout": [], "raw_socket": []}
    await protocol_stream(client, min(nbytes, 10_000_000))  # warm-up: first allocations, page faults
    await raw_stream(raw_sock, min(nbytes, 10_000_000))
    for _ in range(rounds):
        throughput["protocol_stdout"].append(await protocol_stream(client, nbytes))
        throughput["raw_socket"].append(await raw_stream(raw_sock, nbytes))
    await client.close()

    tput = {name: round(statistics.median(v), 1) for name, v in throughput.items()}
    # Ratio per round (the two transfers of a round ran back to back, under the same load) and its spread.
    pairs = zip(throughput["protocol_stdout"], throughput["raw_socket"], strict=True)
    ratios = sorted(p / r for p, r in pairs)
    latency_part: dict[str, Any] = {}
    if lat:
        latency_part = {
            "latency": lat,
            "exec_true_over_raw_echo_median": round(
                lat["exec_true"]["median_ms"] / lat["raw_echo"]["median_ms"], 1
            ),
        }
    return {
        **latency_part,
        "throughput_MBps": tput,
        "throughput_rounds_MBps": {name: [round(x, 1) for x in v] for name, v in throughput.items()},
        "protocol_vs_raw_throughput": round(tput["protocol_stdout"] / tput["raw_socket"], 2),
        "protocol_vs_raw_per_round": {
            "median": round(statistics.median(ratios), 2),
            "min": round(ratios[0], 2),
            "max": round(ratios[-1], 2),
        },
    }


async def measure_latency(client: AgentClient, raw_sock: Path, runs: int) -> dict[str, Any]:
    echo_reader, echo_writer = await asyncio.open_unix_connection(str(raw_sock))
    echo_writer.write(b"ECHO\n")
    payload = os.urandom(64)
    latency: dict[str, list[float]] = {"exec_true": [], "raw_echo": [], "ping": [], "local_spawn_true": []}
    for _ in range(20):  # warm-up: first spawns and page faults
        await client.run(["true"])
        await raw_round_trip(echo_reader, echo_writer, payload)
    for _ in range(runs):
        await timed(latency["exec_true"], client.run(["true"]))
        await timed(latency["raw_echo"], raw_round_trip(echo_reader, echo_writer, payload))
        await timed(latency["ping"], client.ping())
        await timed(latency["local_spawn_true"], local_true())
    echo_writer.close()
    return {name: summarize(samples) for name, samples in latency.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=500, help="latency samples each (0: throughput only)")
    parser.add_argument("--mb", type=int, default=200, help="MB streamed per throughput round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="clawpot-bench-") as tmp:
        agent_sock, raw_sock = Path(tmp) / "agent.sock", Path(tmp) / "raw.sock"
        agent = start([sys.executable, "-m", "clawpot.agent", "--listen-unix", str(agent_sock)], READY_LINE)
        raw = start([sys.executable, "-c", RAW_SERVER, str(raw_sock)], "ready")
        try:
            results = asyncio.run(measure(agent_sock, raw_sock, args.runs, args.mb * 1_000_000, args.rounds))
        finally:
            for proc in (agent, raw):
                proc.terminate()
                proc.wait()
    print(
        json.dumps(
            {
                "benchmark": "agent exec latency and stdout throughput vs raw unix socket",
                "host": {
                    "python": platform.python_version(),
                    "kernel": platform.release(),
                    "cpus": os.cpu_count(),
                },
                "runs": args.runs,
                "stream_bytes": args.mb * 1_000_000,
                **results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
