"""Copies of running VMs through the real server and CLI (QEMU/TCG): the warm pool, restores
refreshed, forks.

One server runs in a network namespace this module creates (server_harness), with this tree's agent
injected into a copy of the root image (the refresh fields of configure are newer than the installed
image's agent may be) and a warm pool of two 1 vCPU / 256 MiB VMs. One cold VM of another shape
(288 MiB, so the pool does not serve it), shared, runs a guest process holding a counter in memory.

Checked:
- the pool fills (hidden from ListVms unless asked, paused, unreachable by user calls), a matching
  create is served from it (origin pool, its own identity, reachable, the agent answers) and it refills
  after hand-outs; a create it cannot serve is a cold boot;
- two restores of one snapshot taken seconds earlier read different bytes from /dev/urandom (the host's
  entropy reseeded each kernel RNG) and have the host's time (the clock was stepped, not left where the
  snapshot stopped it);
- ForkVm: two forks of the running VM run on from the same moment (the counter process, the file),
  then diverge (each writes its own file, counts on its own), with their own address, MAC and hostname,
  each reachable from the namespace, origin fork; the source runs on; a session open in the source at
  fork time is gone in the forks, and new connections to them work at once;
- `kill -9` of the server with a full pool: after the restart no QEMU, TAP, directory or row of the old
  pool VMs is left.
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
    proc_exists,
    server_in_namespace,
    wait_until,
)
from support.netns import icmp_echo

from clawpot.network.config import DEFAULT_TAP_PREFIX
from clawpot.network.naming import mac_for_address, tap_name_for
from clawpot.v1 import vm_pb2
from clawpot.vmm.cgroups import cgroup_paths

POOL = "1x256:2"
SOURCE_MEMORY = "288"  # not the pool's shape: a cold VM, whose RAM is a shared memfd
# Written to a new file and renamed: `echo > /tmp/c` truncates first, and a reader between the
# truncate and the write read an empty counter.
COUNTER = (
    "echo $$ > /tmp/c.pid; i=0; "
    "while :; do i=$((i+1)); echo $i > /tmp/c.new; mv /tmp/c.new /tmp/c; sleep 0.1; done"
)


@pytest.fixture(scope="module")
def server(
    installed_assets: InstalledAssets, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    assets = injected_assets(installed_assets, tmp_path_factory.mktemp("fork-assets"))
    # Paused: the hand-out's resume path, and no CPU spent by waiting pool VMs during the tests.
    with server_in_namespace(
        tmp_path_factory.mktemp("fork"), assets, "--pool", POOL, "--pool-state", "paused"
    ) as srv:
        yield srv


@pytest.fixture(scope="module")
def vm(server: ServerProcess) -> str:
    vm_id = server.create("--memory", SOURCE_MEMORY)
    started = server.exec(vm_id, "sh", "-c", f"(setsid sh -c '{COUNTER}' </dev/null >/dev/null 2>&1 &)")
    assert started.returncode == 0, started.stderr
    assert server.exec(vm_id, "sh", "-c", "echo source > /root/mark && sync").returncode == 0
    _counter_above(server, vm_id, 3)
    return vm_id


def _pool(server: ServerProcess) -> dict[str, vm_pb2.Vm]:
    with server.stub() as api:
        listed = api.ListVms(vm_pb2.ListVmsRequest(include_pool=True), timeout=30).vms
    return {v.id: v for v in listed if v.pooled}


def _pool_full(server: ServerProcess, count: int = 2) -> dict[str, vm_pb2.Vm]:
    wait_until(
        lambda: (
            len(_pool(server)) == count
            and all(v.state == vm_pb2.VM_STATE_PAUSED for v in _pool(server).values())
        ),
        240,
        f"the warm pool to hold {count} paused VMs",
        interval=0.5,
    )
    return _pool(server)


def _counter(server: ServerProcess, vm_id: str) -> int:
    # The guest truncates the file before writing the next value: a copy made (or a read made) in
    # between sees it empty for one tick.
    for _ in range(20):
        result = server.exec(vm_id, "cat", "/tmp/c")
        assert result.returncode == 0, result.stderr
        if result.stdout.strip():
            return int(result.stdout)
        time.sleep(0.1)
    raise AssertionError(f"/tmp/c of {vm_id} stayed empty")


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


def test_the_pool_fills_and_its_vms_are_not_user_vms(server: ServerProcess) -> None:
    pool = _pool_full(server)
    assert not set(pool) & set(server.vms())  # not listed by default
    for vm_id, view in pool.items():
        assert view.origin == vm_pb2.VM_ORIGIN_POOL and view.ip_address
        assert vm_id in server.vm_dirs() and vm_id in server.vmm_pids()
        for args in (("exec", vm_id, "--", "true"), ("delete", vm_id), ("fork", vm_id), ("pause", vm_id)):
            refused = server.cli(*args)
            assert refused.returncode == 1 and f"VM {vm_id} not found" in refused.stderr, refused
    listed = json.loads(server.cli_ok("list", "--pool", "-o", "json"))
    assert {v["id"] for v in listed if v["pooled"]} == set(pool)
    # The template is hidden: never among the snapshots.
    assert server.cli_ok("snapshots", "-o", "json").strip() == "[]"


def test_creates_are_served_from_the_pool_and_it_refills(server: ServerProcess) -> None:
    pool = _pool_full(server)
    taken = []
    offsets = []
    for _ in range(2):
        taken.append(server.create())
        # First thing: a TCG guest's jiffies clock runs fast (up to ~1.5x here), so only a reading
        # right after the hand-out shows the step (the pool VM slept paused for a while before).
        offsets.append(_guest_clock_offset(server, taken[-1]))
    try:
        assert all(abs(o) < 2.0 for o in offsets), offsets
        assert set(taken) == set(pool)  # the ready VMs, handed out
        for vm_id in taken:
            view = _get(server, vm_id)
            assert (view.origin, view.pooled, view.state) == (
                vm_pb2.VM_ORIGIN_POOL,
                False,
                vm_pb2.VM_STATE_RUNNING,
            )
            assert server.exec(vm_id, "hostname").stdout.strip() == vm_id
            assert f"inet {view.ip_address}/" in server.exec(vm_id, "ip", "-4", "addr", "show", "eth0").stdout
            assert server.ns.call(icmp_echo, view.ip_address, 5.0), f"no echo reply from {view.ip_address}"
        assert _random_hex(server, taken[0]) != _random_hex(server, taken[1])
        assert {v["origin"] for v in json.loads(server.cli_ok("list", "-o", "json"))} >= {"pool"}
        assert "from the warm pool (1x256)" in server.log_path.read_text()
        # It refills: two new ready VMs, other ids.
        refilled = _pool_full(server)
        assert not set(refilled) & set(taken)
    finally:
        server.cli_ok("delete", *taken)


def test_restores_get_fresh_entropy_and_the_hosts_clock(server: ServerProcess, vm: str) -> None:
    assert server.cli_ok("snapshot", vm, "refresh").strip() == "refresh"
    time.sleep(5)  # the snapshot's clock stands still: a restore without the step would be 5 s late
    clones, offsets = [], []
    for _ in range(2):
        clones.append(server.create("--from", "refresh"))
        offsets.append(_guest_clock_offset(server, clones[-1]))  # at once: a TCG guest's clock runs fast
    try:
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
    left = [d.name for d in (server.data_dir / "snapshots").iterdir() if not d.name.startswith(".pool-")]
    assert not left, f"the fork left {left}"


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
    assert not [d for d in (server.data_dir / "snapshots").iterdir() if not d.name.startswith(".pool-")]


def test_a_killed_server_leaves_no_pool_vm_behind(server: ServerProcess, vm: str) -> None:
    old = _pool_full(server)
    pids = server.vmm_pids()
    old_pids = {pids[vm_id] for vm_id in old}
    server.kill9()
    server.start()
    # The old pool is gone at once (reconcile, before the server serves): QEMU, TAP, directory, row.
    assert not any(proc_exists(pid) for pid in old_pids)
    assert not set(old) & set(server.vm_dirs())
    rows = server.db_rows("SELECT id FROM vms")
    assert not set(old) & {row[0] for row in rows}
    assert not {tap_name_for(vm_id, DEFAULT_TAP_PREFIX) for vm_id in old} & server.taps()
    assert not [vm_id for vm_id in old if cgroup_paths(vm_id)], "a pool VM's cgroup was left behind"
    # The user VM was adopted. (The new server makes its own pool: not waited for here, the refill
    # test above shows a pool filling.)
    assert _get(server, vm).state == vm_pb2.VM_STATE_RUNNING
    assert not set(_pool(server)) & set(old)
