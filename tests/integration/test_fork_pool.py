"""Copies of running VMs through the real server and CLI (QEMU/TCG): restores refreshed, forks.

One server runs in a network namespace this module creates (server_harness), with this tree's agent
injected into a copy of the root image (the refresh fields of configure are newer than the installed
image's agent may be). One cold VM, shared, runs a guest process holding a counter in memory.

Checked:
- two restores of one snapshot taken seconds earlier read different bytes from /dev/urandom (the host's
  entropy reseeded each kernel RNG) and have the host's time (the clock was stepped, not left where the
  snapshot stopped it);
- ForkVm: two forks of the running VM run on from the same moment (the counter process, the file),
  then diverge (each writes its own file, counts on its own), with their own address, MAC and hostname,
  each reachable from the namespace, origin fork; the source runs on; a session open in the source at
  fork time is gone in the forks, and new connections to them work at once.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import time
from collections.abc import Iterator

import pytest
from server_harness import (
    InstalledAssets,
    ServerProcess,
    code_of,
    injected_assets,
    server_in_namespace,
    wait_until,
)
from support.netns import icmp_echo

from clawpot.network.naming import mac_for_address
from clawpot.v1 import vm_pb2

COUNTER = "echo $$ > /tmp/c.pid; i=0; while :; do i=$((i+1)); echo $i > /tmp/c; sleep 0.1; done"


@pytest.fixture(scope="module")
def server(
    installed_assets: InstalledAssets, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    assets = injected_assets(installed_assets, tmp_path_factory.mktemp("fork-assets"))
    with server_in_namespace(tmp_path_factory.mktemp("fork"), assets) as srv:
        yield srv


@pytest.fixture(scope="module")
def vm(server: ServerProcess) -> str:
    vm_id = server.create()
    started = server.exec(vm_id, "sh", "-c", f"(setsid sh -c '{COUNTER}' </dev/null >/dev/null 2>&1 &)")
    assert started.returncode == 0, started.stderr
    assert server.exec(vm_id, "sh", "-c", "echo source > /root/mark && sync").returncode == 0
    _counter_above(server, vm_id, 3)
    return vm_id


def _counter(server: ServerProcess, vm_id: str) -> int:
    result = server.exec(vm_id, "cat", "/tmp/c")
    assert result.returncode == 0, result.stderr
    return int(result.stdout)


def _counter_above(server: ServerProcess, vm_id: str, above: int) -> int:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if (value := _counter(server, vm_id)) > above:
            return value
        time.sleep(0.2)
    raise AssertionError(f"the guest counter of {vm_id} stayed at or below {above}")


def _get(server: ServerProcess, vm_id: str) -> vm_pb2.Vm:
    with server.stub() as api:
        return api.GetVm(vm_pb2.GetVmRequest(id=vm_id), timeout=30)


def _random_hex(server: ServerProcess, vm_id: str) -> str:
    out = server.exec(vm_id, "sh", "-c", "head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'")
    assert out.returncode == 0 and len(out.stdout) == 64, out
    return out.stdout


def _guest_clock_offset(server: ServerProcess, vm_id: str) -> float:
    """Guest wall clock minus host wall clock, seconds (bounded by the exec's round trip)."""
    before = time.time()
    out = server.exec(vm_id, "date", "+%s.%N")
    after = time.time()
    assert out.returncode == 0, out
    guest = float(out.stdout)
    if before <= guest <= after:
        return 0.0
    return guest - after if guest > after else guest - before


def test_restores_get_fresh_entropy_and_the_hosts_clock(server: ServerProcess, vm: str) -> None:
    assert server.cli_ok("snapshot", vm, "refresh").strip() == "refresh"
    time.sleep(5)  # the snapshot's clock stands still: a restore without the step would be 5 s late
    clones = [server.create("--from", "refresh") for _ in range(2)]
    try:
        offsets = [_guest_clock_offset(server, c) for c in clones]
        assert all(abs(o) < 2.0 for o in offsets), offsets
        first, second = (_random_hex(server, c) for c in clones)
        assert first != second
        for clone in clones:
            assert _get(server, clone).origin == vm_pb2.VM_ORIGIN_RESTORE
    finally:
        server.cli_ok("delete", *clones)
        server.cli_ok("snapshots", "rm", "refresh")


def test_forks_diverge_with_their_own_identity(server: ServerProcess, vm: str) -> None:
    source = _get(server, vm)
    # A session open in the source at fork time: an exec that would run for minutes.
    held = server.cli_popen(
        "exec", vm, "--", "sh", "-c", "echo held; exec sleep 3000", stdout=subprocess.PIPE
    )
    try:
        assert held.stdout is not None and held.stdout.readline() == b"held\n"
        at_fork = _counter(server, vm)
        started = time.monotonic()
        forks = server.cli_ok("fork", vm, "-n", "2").split()
        fork_s = time.monotonic() - started
        assert len(forks) == 2 and vm not in forks and forks[0] != forks[1]
        try:
            _check_forks(server, vm, source, forks, at_fork)
        finally:
            server.cli_ok("delete", *forks)
        # The source ran on and kept its session: the held exec is still there.
        assert held.poll() is None
        _counter_above(server, vm, _counter(server, vm))
    finally:
        held.kill()
        held.wait()
    print(f"\nfork -n 2 (CLI, QEMU/TCG, both copies answering with their identity): {fork_s:.2f} s")
    assert not [d for d in (server.data_dir / "snapshots").iterdir()], "the fork's template was left"


def _check_forks(server: ServerProcess, vm: str, source: vm_pb2.Vm, forks: list[str], at_fork: int) -> None:
    views = [_get(server, f) for f in forks]
    for view in views:
        assert view.state == vm_pb2.VM_STATE_RUNNING
        assert (view.origin, view.forked_from) == (vm_pb2.VM_ORIGIN_FORK, vm)
    assert json.loads(server.cli_ok("get", forks[0]))["origin"] == "fork"
    addresses = {v.ip_address for v in views} | {source.ip_address}
    assert len(addresses) == 3 and "" not in addresses
    macs = set()
    for view in views:
        fork = view.id
        assert server.exec(fork, "hostname").stdout.strip() == fork
        mac = server.exec(fork, "cat", "/sys/class/net/eth0/address").stdout.strip()
        assert mac == mac_for_address(ipaddress.IPv4Address(view.ip_address))
        macs.add(mac)
        assert server.ns.call(icmp_echo, view.ip_address, 5.0), f"no echo reply from {view.ip_address}"
        # The source's memory and disk of the fork's moment: its file, its counting process.
        assert server.exec(fork, "cat", "/root/mark").stdout == "source\n"
        assert _counter(server, fork) >= at_fork
        # The session the source had open is not carried over: no `sleep 3000` in the copy.
        wait_until(
            lambda f=fork: "sleep 3000" not in server.exec(f, "ps", "-o", "args").stdout,  # type: ignore[misc]
            10,
            f"the held session's process to end in {fork}",
        )
    assert len(macs) == 2
    # They diverge: each writes its own file, which neither the other nor the source sees.
    for fork in forks:
        assert server.exec(fork, "sh", "-c", f"echo {fork} > /root/own").returncode == 0
    for fork in forks:
        assert server.exec(fork, "cat", "/root/own").stdout == f"{fork}\n"
    assert server.exec(vm, "test", "-e", "/root/own").returncode == 1
    # Their counters run on independently, and their random bytes differ.
    for fork in forks:
        _counter_above(server, fork, _counter(server, fork))
    assert _random_hex(server, forks[0]) != _random_hex(server, forks[1])


def test_fork_refusals_leave_nothing(server: ServerProcess, vm: str) -> None:
    before = set(server.vms())
    for args, message in (
        (("fork", "vm-nosuch"), "not found"),
        (("fork", vm, "-n", "0"), "Invalid value"),
    ):
        refused = server.cli(*args)
        assert refused.returncode != 0 and message in refused.stderr, refused
    with server.stub() as api:
        code, message = code_of(lambda: api.ForkVm(vm_pb2.ForkVmRequest(id=vm, count=17), timeout=30))
        assert code.name == "INVALID_ARGUMENT" and "1-16" in message
        server.cli_ok("pause", vm)
        try:
            code, message = code_of(lambda: api.ForkVm(vm_pb2.ForkVmRequest(id=vm), timeout=30))
            assert code.name == "FAILED_PRECONDITION" and "Paused" in message, message
        finally:
            server.cli_ok("resume", vm)
    assert set(server.vms()) == before
    assert not list((server.data_dir / "snapshots").iterdir())
