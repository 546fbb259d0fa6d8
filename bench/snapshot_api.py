"""The API part of bench/snapshot.py: a real ``clawpot-server`` with a warm pool, driven over gRPC.

The server runs in a network namespace of its own (``unshare --net``: its bridge, TAPs and NAT rules
vanish with it), on a data directory whose root image is a copy of the installed one with this tree's
agent injected (the pool's refresh needs its ``configure`` fields). Measured, as a gRPC client sees it:

- (a) ``CreateVm`` of the pool's shape served from the warm pool: the call returns once the VM's agent
  answered the hand-out's configure (fresh entropy, clock). Before each sample the pool is full again,
  so every sample is a hand-out, not a fallback. Baseline in the same run: a cold ``CreateVm`` (another
  shape, which the pool does not serve);
- (c) ``ForkVm`` of a running cold VM, count 1: to the copy's agent answering with its new identity;
- (d) ``PauseVm`` + ``ResumeVm`` round trips on a running VM.
"""

from __future__ import annotations

import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc

from clawpot.assets.inject import inject
from clawpot.v1 import vm_pb2, vm_pb2_grpc

CREATE_TIMEOUT = 300.0
SERVER_BIN = Path(sys.executable).parent / "clawpot-server"


def summary(samples: list[float]) -> dict[str, Any]:
    ms = sorted(s * 1000 for s in samples)
    return {
        "n": len(ms),
        "p50_ms": round(statistics.median(ms), 1),
        "p99_ms": round(ms[min(len(ms) - 1, int(len(ms) * 0.99))], 1),
        "min_ms": round(ms[0], 1),
        "max_ms": round(ms[-1], 1),
    }


class Server:
    def __init__(self, root: Path, kernel: Path, rootfs: Path, pool: str, pool_state: str) -> None:
        self.root = root
        assets = root / "data" / "assets"
        assets.mkdir(parents=True)
        (assets / "vmlinux").symlink_to(kernel)
        subprocess.run(["cp", "--sparse=always", str(rootfs), str(assets / "rootfs.ext4")], check=True)
        inject(assets / "rootfs.ext4")
        self.socket = root / "api.sock"
        self.log = root / "server.log"
        argv = [
            "unshare",
            "--net",
            "--",
            str(SERVER_BIN),
            "--listen",
            f"unix:{self.socket}",
            "--data-dir",
            str(root / "data"),
            "--vmm",
            "qemu",
            "--pool",
            pool,
            "--pool-state",
            pool_state,
        ]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        self.channel = grpc.insecure_channel(f"unix:{self.socket}")
        self.api = vm_pb2_grpc.VmServiceStub(self.channel)
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"clawpot-server exited: {self.log.read_text()[-2000:]}")
            try:
                self.api.ListVms(vm_pb2.ListVmsRequest(), timeout=2)
                break
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def pool_ready(self) -> int:
        listed = self.api.ListVms(vm_pb2.ListVmsRequest(include_pool=True), timeout=30).vms
        return sum(1 for vm in listed if vm.pooled and vm.state == self._ready_state)

    _ready_state = vm_pb2.VM_STATE_PAUSED

    def wait_pool(self, count: int, timeout: float = 600.0) -> float:
        began = time.monotonic()
        while self.pool_ready() < count:
            if time.monotonic() - began > timeout:
                raise RuntimeError(f"the pool did not reach {count} ready VMs; log: {self.log}")
            time.sleep(0.1)
        return time.monotonic() - began

    def close(self) -> None:
        # What the server said about pool, forks and creates (timings per step), for the reader.
        for line in self.log.read_text(errors="replace").splitlines():
            if any(word in line for word in ("pool", "forked", "cold boot", "restored")):
                print("server:", line[:400], file=sys.stderr)
        self.channel.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def run(args: Any, kernel: Path, rootfs: Path, root: Path) -> dict[str, Any]:
    """(a), (c), (d) through a real server; returns the JSON part."""
    vcpus, memory = 1, args.memory
    result: dict[str, Any] = {}
    for state in args.pool_states:
        workdir = root / f"api-{state}"
        server = Server(workdir, kernel, rootfs, f"{vcpus}x{memory}:{args.pool}", state)
        server._ready_state = vm_pb2.VM_STATE_PAUSED if state == "paused" else vm_pb2.VM_STATE_RUNNING
        try:
            filled = server.wait_pool(args.pool)
            hand_outs: list[float] = []
            for index in range(args.handouts):
                server.wait_pool(args.pool)
                time.sleep(args.settle)  # let the refill's restore finish its work on the CPUs
                began = time.perf_counter()
                vm = server.api.CreateVm(
                    vm_pb2.CreateVmRequest(vcpus=vcpus, memory_mib=memory), timeout=CREATE_TIMEOUT
                )
                hand_outs.append(time.perf_counter() - began)
                assert vm.origin == vm_pb2.VM_ORIGIN_POOL, vm
                server.api.DeleteVm(vm_pb2.DeleteVmRequest(id=vm.id), timeout=60)
                print(f"pool ({state}) hand-out {index + 1}: {hand_outs[-1] * 1000:.1f} ms", file=sys.stderr)
            part: dict[str, Any] = {
                "pool_first_fill_s": round(filled, 1),
                "a_pool_create": {**summary(hand_outs), "target_p50_ms": 50, "target_p99_ms": 150},
            }
            part["a_pool_create"]["met"] = (
                part["a_pool_create"]["p50_ms"] <= 50 and part["a_pool_create"]["p99_ms"] <= 150
            )
            if state == args.pool_states[0]:
                part.update(_cold_fork_pause(server, args, vcpus, memory))
            result[f"pool_{state}"] = part
        finally:
            server.close()
            shutil.rmtree(workdir, ignore_errors=True)
    return result


def _cold_fork_pause(server: Server, args: Any, vcpus: int, memory: int) -> dict[str, Any]:
    # Cold creates: another shape (memory + 32 MiB), which the pool does not serve.
    colds: list[float] = []
    source = ""
    for index in range(args.cold):
        server.wait_pool(args.pool)
        began = time.perf_counter()
        vm = server.api.CreateVm(
            vm_pb2.CreateVmRequest(vcpus=vcpus, memory_mib=memory + 32), timeout=CREATE_TIMEOUT
        )
        colds.append(time.perf_counter() - began)
        assert vm.origin == vm_pb2.VM_ORIGIN_COLD, vm
        print(f"cold create {index + 1}: {colds[-1]:.2f} s", file=sys.stderr)
        if source:
            server.api.DeleteVm(vm_pb2.DeleteVmRequest(id=vm.id), timeout=60)
        else:
            source = vm.id
    out: dict[str, Any] = {"cold_create": summary(colds)}
    # (d) pause + resume through the API.
    rounds = []
    for _ in range(args.pauses):
        began = time.perf_counter()
        server.api.PauseVm(vm_pb2.PauseVmRequest(id=source), timeout=30)
        server.api.ResumeVm(vm_pb2.ResumeVmRequest(id=source), timeout=30)
        rounds.append(time.perf_counter() - began)
    gets = []
    for _ in range(args.pauses):
        began = time.perf_counter()
        server.api.GetVm(vm_pb2.GetVmRequest(id=source), timeout=30)
        server.api.GetVm(vm_pb2.GetVmRequest(id=source), timeout=30)
        gets.append(time.perf_counter() - began)
    d = summary(rounds)
    out["d_pause_resume_api"] = {**d, "baseline_two_getvm": summary(gets), "target_ms": 5.0}
    out["d_pause_resume_api"]["met"] = d["p50_ms"] <= 5.0
    # (c) fork of the running cold VM, one copy at a time.
    forks: list[float] = []
    for index in range(args.forks):
        server.wait_pool(args.pool)
        time.sleep(args.settle)
        began = time.perf_counter()
        reply = server.api.ForkVm(vm_pb2.ForkVmRequest(id=source, count=1), timeout=CREATE_TIMEOUT)
        forks.append(time.perf_counter() - began)
        print(f"fork {index + 1}: {forks[-1] * 1000:.0f} ms", file=sys.stderr)
        for vm in reply.vms:
            server.api.DeleteVm(vm_pb2.DeleteVmRequest(id=vm.id), timeout=60)
    c = summary(forks)
    out["c_fork"] = {**c, "target_ms": 500, "met": c["p50_ms"] <= 500}
    server.api.DeleteVm(vm_pb2.DeleteVmRequest(id=source), timeout=60)
    return out
