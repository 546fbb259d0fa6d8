"""Pause, resume, snapshots and restores of real QEMU/TCG VMs through the real server and the real CLI.

One server runs in a network namespace this module creates (server_harness), with one VM shared by the
tests. The VM runs a guest process that holds a counter in memory (it writes it to /tmp/c every 0.1 s)
and has a file written before the first pause. Checked: both survive pause/resume and a server restart
while paused; a paused VM keeps its QEMU, address and TAP; exec on it fails with FAILED_PRECONDITION
without reaching the agent; the pause + resume round trip as a gRPC client sees it is printed as JSON
next to a baseline measured in the same run (two GetVm calls: the RPCs with no VMM work).

Snapshots: of the running VM and of the paused one; a VM created from a snapshot has its own id,
address, MAC and hostname (set through the agent's configure, which the installed root image's agent
may predate: the server here runs a copy of it with this tree's agent injected), is reachable from the
namespace at its new address, and carries the counter and the file of the moment of the snapshot. A
snapshot is not deleted while a VM restored from it exists.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import statistics
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from server_harness import InstalledAssets, ServerProcess, code_of, server_in_namespace, wait_until
from support.netns import icmp_echo

from clawpot.assets.inject import inject
from clawpot.network.config import DEFAULT_TAP_PREFIX
from clawpot.network.naming import mac_for_address, tap_name_for
from clawpot.v1 import vm_pb2
from clawpot.vmm.qemu.qmp import QmpControl

# Written to a new file and renamed: `echo > /tmp/c` truncates first, and a reader between the
# truncate and the write read an empty counter.
COUNTER = (
    "echo $$ > /tmp/c.pid; i=0; "
    "while :; do i=$((i+1)); echo $i > /tmp/c.new; mv /tmp/c.new /tmp/c; sleep 0.1; done"
)
MARK = "written before the pause"
ROUNDS = 50  # pause + resume round trips measured (each a few ms: the whole loop is well under a second)


@dataclass(frozen=True)
class Assets:
    kernel: Path
    rootfs: Path


@pytest.fixture(scope="module")
def assets(installed_assets: InstalledAssets, tmp_path_factory: pytest.TempPathFactory) -> Assets:
    """The installed kernel and a copy of the root image with this tree's agent (it has configure)."""
    directory = tmp_path_factory.mktemp("pause-assets")
    (directory / "vmlinux").symlink_to(installed_assets.kernel)
    rootfs = directory / "rootfs.ext4"
    subprocess.run(["cp", "--sparse=always", str(installed_assets.rootfs), str(rootfs)], check=True)
    inject(rootfs)
    return Assets(directory / "vmlinux", rootfs)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, assets: Assets) -> Iterator[ServerProcess]:
    with server_in_namespace(tmp_path_factory.mktemp("pause"), assets) as srv:
        yield srv


@pytest.fixture(scope="module")
def vm(server: ServerProcess) -> str:
    vm_id = server.create()
    started = server.exec(vm_id, "sh", "-c", f"(setsid sh -c '{COUNTER}' </dev/null >/dev/null 2>&1 &)")
    assert started.returncode == 0, started.stderr
    wrote = server.exec(vm_id, "sh", "-c", f"echo '{MARK}' > /root/mark && sync")
    assert wrote.returncode == 0, wrote.stderr
    _counter_above(server, vm_id, 3)
    return vm_id


def _counter(server: ServerProcess, vm_id: str) -> int:
    result = server.exec(vm_id, "cat", "/tmp/c")
    assert result.returncode == 0, result.stderr
    return int(result.stdout)


def _counter_above(server: ServerProcess, vm_id: str, above: int) -> int:
    """The counter once it is past ``above``: the guest process runs (and kept its count)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if (value := _counter(server, vm_id)) > above:
            return value
        time.sleep(0.2)
    raise AssertionError(f"the guest counter stayed at or below {above}")


def _state(server: ServerProcess, vm_id: str) -> vm_pb2.Vm:
    with server.stub() as api:
        return api.GetVm(vm_pb2.GetVmRequest(id=vm_id), timeout=30)


def test_memory_and_a_file_survive_pause_and_resume(server: ServerProcess, vm: str) -> None:
    before_vm = _state(server, vm)
    qemu_pid = server.vmm_pids()[vm]
    before = _counter(server, vm)

    assert server.cli_ok("pause", vm).strip() == vm
    paused = _state(server, vm)
    assert paused.state == vm_pb2.VM_STATE_PAUSED
    # It keeps what it holds: the same QEMU process, address and TAP.
    assert server.vmm_pids()[vm] == qemu_pid
    assert paused.ip_address == before_vm.ip_address != ""
    assert tap_name_for(vm, DEFAULT_TAP_PREFIX) in server.taps()
    assert server.db_rows(f"SELECT state FROM vms WHERE id='{vm}'") == [("Paused",)]
    listed = json.loads(server.cli_ok("list", "-o", "json"))
    assert [v["state"] for v in listed if v["id"] == vm] == ["paused"]

    time.sleep(1.0)  # were the guest running, its counter would move ~10 in this time
    assert server.cli_ok("resume", vm).strip() == vm
    assert _state(server, vm).state == vm_pb2.VM_STATE_RUNNING
    # The process kept its count in memory: it goes on from where it was, not from 0.
    after = _counter(server, vm)
    assert after >= before
    _counter_above(server, vm, after)
    assert server.exec(vm, "cat", "/root/mark").stdout == f"{MARK}\n"


def test_exec_and_files_on_a_paused_vm_fail_at_once(server: ServerProcess, vm: str) -> None:
    with server.stub() as api:
        api.PauseVm(vm_pb2.PauseVmRequest(id=vm), timeout=30)
        try:
            started = time.monotonic()
            cli = server.exec(vm, "true")
            elapsed = time.monotonic() - started
            assert cli.returncode == 1
            assert f"VM {vm} is paused" in cli.stderr
            assert elapsed < 30  # no agent call: not the agent timeout
            target = server.data_dir.parent / "mark-copy"
            download = server.cli("cp", f"{vm}:/root/mark", str(target))
            assert download.returncode == 1 and "is paused" in download.stderr
            assert not target.exists()
            code, message = code_of(lambda: api.PauseVm(vm_pb2.PauseVmRequest(id=vm), timeout=30))
            assert code == grpc.StatusCode.FAILED_PRECONDITION and "Paused, not Running" in message
        finally:
            api.ResumeVm(vm_pb2.ResumeVmRequest(id=vm), timeout=30)
        code, message = code_of(lambda: api.ResumeVm(vm_pb2.ResumeVmRequest(id=vm), timeout=30))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "Running, not Paused" in message
        code, _ = code_of(lambda: api.PauseVm(vm_pb2.PauseVmRequest(id="vm-nosuch"), timeout=30))
        assert code == grpc.StatusCode.NOT_FOUND
    assert server.exec(vm, "echo", "ok").stdout == "ok\n"


def test_pause_resume_round_trip_through_the_api(server: ServerProcess, vm: str) -> None:
    with server.stub() as api:
        get = vm_pb2.GetVmRequest(id=vm)
        for _ in range(5):  # warm the channel and both code paths
            api.PauseVm(vm_pb2.PauseVmRequest(id=vm), timeout=30)
            api.ResumeVm(vm_pb2.ResumeVmRequest(id=vm), timeout=30)
            api.GetVm(get, timeout=30)
        rounds, baseline = [], []
        for _ in range(ROUNDS):
            started = time.perf_counter()
            api.PauseVm(vm_pb2.PauseVmRequest(id=vm), timeout=30)
            api.ResumeVm(vm_pb2.ResumeVmRequest(id=vm), timeout=30)
            rounds.append(time.perf_counter() - started)
            started = time.perf_counter()
            api.GetVm(get, timeout=30)
            api.GetVm(get, timeout=30)
            baseline.append(time.perf_counter() - started)
    assert _state(server, vm).state == vm_pb2.VM_STATE_RUNNING
    report = {
        "what": "PauseVm + ResumeVm round trip, gRPC client over the server's unix socket, QEMU/TCG",
        "rounds": ROUNDS,
        "pause_resume_ms": {"p50": _ms(statistics.median(rounds)), "p99": _ms(_p99(rounds))},
        "baseline_two_getvm_ms": {"p50": _ms(statistics.median(baseline)), "p99": _ms(_p99(baseline))},
        "target_p50_ms": 5.0,
    }
    print("\n" + json.dumps(report))
    _counter_above(server, vm, _counter(server, vm))  # still running, still counting


def test_a_snapshot_restores_as_a_new_vm_with_its_own_identity(server: ServerProcess, vm: str) -> None:
    source = _state(server, vm)
    before_snapshot = _counter(server, vm)  # the count only grows: the snapshot's is at least this
    counter_pid = server.exec(vm, "cat", "/tmp/c.pid").stdout.strip()
    assert server.cli_ok("snapshot", vm, "base").strip() == "base"
    at_snapshot = _counter(server, vm)
    assert _state(server, vm).state == vm_pb2.VM_STATE_RUNNING  # running again after the snapshot
    _counter_above(server, vm, at_snapshot)
    (listed,) = [s for s in json.loads(server.cli_ok("snapshots", "-o", "json")) if s["name"] == "base"]
    assert (listed["backend"], listed["vcpus"], listed["memory_mib"], listed["used_by"]) == (
        "qemu",
        1,
        256,
        [],
    )
    assert (server.data_dir / "snapshots" / "base" / "manifest.json").is_file()

    started = time.monotonic()
    clone = server.create("--from", "base")
    restore_s = time.monotonic() - started
    try:
        made = _state(server, clone)
        assert clone != vm and made.state == vm_pb2.VM_STATE_RUNNING
        assert (made.origin, made.snapshot) == (vm_pb2.VM_ORIGIN_RESTORE, "base")
        assert source.origin == vm_pb2.VM_ORIGIN_COLD
        assert made.ip_address not in ("", source.ip_address)
        assert json.loads(server.cli_ok("get", clone))["origin"] == "restore"
        # Its own identity, in the guest: hostname, address, MAC.
        assert server.exec(clone, "hostname").stdout.strip() == clone
        mac = mac_for_address(ipaddress.IPv4Address(made.ip_address))
        assert server.exec(clone, "cat", "/sys/class/net/eth0/address").stdout.strip() == mac
        assert f"inet {made.ip_address}/" in server.exec(clone, "ip", "-4", "addr", "show", "eth0").stdout
        # Reachable at its new address from the namespace (through its own TAP's rules).
        assert server.ns.call(icmp_echo, made.ip_address, 5.0), f"no echo reply from {made.ip_address}"
        # The memory and the file of the moment of the snapshot: the counter goes on from there.
        assert server.exec(clone, "cat", "/root/mark").stdout == f"{MARK}\n"
        # The very process (same PID, no boot started it), counting on from the snapshot's value.
        assert server.exec(clone, "cat", "/tmp/c.pid").stdout.strip() == counter_pid
        alive = server.exec(clone, "sh", "-c", f"tr '\\0' ' ' < /proc/{counter_pid}/cmdline")
        assert "while :" in alive.stdout, alive
        resumed_at = _counter(server, clone)
        assert resumed_at >= before_snapshot
        _counter_above(server, clone, resumed_at)
        print(
            f"\ncreate --from base (CLI, QEMU/TCG, to agent answering with its identity): {restore_s:.2f} s"
        )

        # The snapshot is in use: not deleted.
        refused = server.cli("snapshots", "rm", "base")
        assert refused.returncode == 1 and f"in use by VM {clone}" in refused.stderr
        used = [
            s["used_by"] for s in json.loads(server.cli_ok("snapshots", "-o", "json")) if s["name"] == "base"
        ]
        assert used == [[clone]]
    finally:
        server.cli_ok("delete", clone)
    assert server.cli_ok("snapshots", "rm", "base").strip() == "base"
    assert "base" not in server.cli_ok("snapshots")
    assert not (server.data_dir / "snapshots" / "base").exists()


def test_a_paused_vm_is_snapshotted_and_stays_paused(server: ServerProcess, vm: str) -> None:
    server.cli_ok("pause", vm)
    try:
        assert server.cli_ok("snapshot", vm, "paused-1").strip() == "paused-1"
        assert _state(server, vm).state == vm_pb2.VM_STATE_PAUSED
    finally:
        server.cli_ok("resume", vm)
    with server.stub() as api:
        for request, expected in (
            (vm_pb2.SnapshotVmRequest(vm_id=vm, name="paused-1"), grpc.StatusCode.ALREADY_EXISTS),
            (vm_pb2.SnapshotVmRequest(vm_id=vm, name="../x"), grpc.StatusCode.INVALID_ARGUMENT),
            (vm_pb2.SnapshotVmRequest(vm_id="vm-nosuch", name="x"), grpc.StatusCode.NOT_FOUND),
        ):
            code, message = code_of(lambda r=request: api.SnapshotVm(r, timeout=60))  # type: ignore[misc]
            assert code == expected, message
        for create, expected in (
            (vm_pb2.CreateVmRequest(from_snapshot="nosuch"), grpc.StatusCode.NOT_FOUND),
            (
                vm_pb2.CreateVmRequest(from_snapshot="paused-1", memory_mib=512),
                grpc.StatusCode.INVALID_ARGUMENT,
            ),
        ):
            code, message = code_of(lambda c=create: api.CreateVm(c, timeout=60))  # type: ignore[misc]
            assert code == expected, message
    assert set(server.vms()) == {vm}  # the refused creates left nothing
    assert server.cli_ok("snapshots", "rm", "paused-1").strip() == "paused-1"
    assert server.exec(vm, "echo", "ok").stdout == "ok\n"


def test_a_paused_vm_stays_paused_across_a_server_restart(server: ServerProcess, vm: str) -> None:
    qemu_pid = server.vmm_pids()[vm]
    address = _state(server, vm).ip_address
    server.cli_ok("pause", vm)
    assert server.terminate() == 0  # the default: VMs are left running for the next server
    server.start()
    adopted = _state(server, vm)
    assert adopted.state == vm_pb2.VM_STATE_PAUSED
    assert adopted.ip_address == address
    assert server.vmm_pids()[vm] == qemu_pid
    assert "is paused" in server.exec(vm, "true").stderr
    with server.stub() as api:  # an adopted VMM can pause and resume, not snapshot: refused, untouched
        code, message = code_of(lambda: api.SnapshotVm(vm_pb2.SnapshotVmRequest(vm_id=vm, name="a")))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "cannot take snapshots" in message
    assert _state(server, vm).state == vm_pb2.VM_STATE_PAUSED
    server.cli_ok("resume", vm)
    wait_until(lambda: _state(server, vm).state == vm_pb2.VM_STATE_RUNNING, 10, "the VM to run")
    after = _counter(server, vm)
    _counter_above(server, vm, after)
    assert server.exec(vm, "cat", "/root/mark").stdout == f"{MARK}\n"


def test_the_vmm_says_whether_an_adopted_vm_is_paused(server: ServerProcess, vm: str) -> None:
    """A server that died between QEMU's stop and recording Paused: the next one asks QEMU (QMP)."""
    assert _state(server, vm).state == vm_pb2.VM_STATE_RUNNING
    assert server.terminate() == 0
    qmp = QmpControl(server.data_dir / "vms" / vm / "qmp.sock")
    asyncio.run(qmp.execute_quick("stop"))  # paused behind the store's back: the row says Running
    assert server.db_rows(f"SELECT state FROM vms WHERE id='{vm}'") == [("Running",)]
    server.start()
    assert _state(server, vm).state == vm_pb2.VM_STATE_PAUSED
    assert server.db_rows(f"SELECT state FROM vms WHERE id='{vm}'") == [("Paused",)]
    server.cli_ok("resume", vm)
    _counter_above(server, vm, _counter(server, vm))


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def _p99(values: list[float]) -> float:
    return sorted(values)[min(len(values) - 1, int(len(values) * 0.99))]
