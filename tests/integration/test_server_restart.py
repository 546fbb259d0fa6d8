"""Five concurrent creates fill a /29, then the server restarts around them: SIGTERM, kill -9, a VM
crashing while no server runs, a server killed mid-create. After each restart the surviving VMs are
adopted (same QEMU processes, exec and cp still work), the crashed ones are Error, and nothing is left
over: no process, directory, TAP, address or duplicate rule.

Everything runs inside a network namespace this module creates (bridge, TAPs and nftables rules
included); clients reach the server over its unix socket. Five real QEMU/TCG VMs boot here, plus one
after the crash and one that is killed half-way.
"""

from __future__ import annotations

import ipaddress
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from server_harness import InstalledAssets, ServerProcess, proc_exists, server_in_namespace, wait_until
from support.netns import nft_rules

from clawpot.network.config import DEFAULT_TAP_PREFIX
from clawpot.network.naming import tap_name_for
from clawpot.v1 import vm_pb2

SUBNET = ipaddress.IPv4Network("192.168.77.0/29")  # gateway .1, five guest addresses .2-.6
GATEWAY = str(SUBNET[1])
EXIT_FAILED = 1


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, installed_assets: InstalledAssets
) -> Iterator[ServerProcess]:
    with server_in_namespace(
        tmp_path_factory.mktemp("restart"), installed_assets, "--subnet", str(SUBNET)
    ) as srv:
        yield srv


@pytest.fixture(scope="module")
def fleet(server: ServerProcess) -> list[str]:
    """Five VMs created by five `clawpot create` processes at once: the whole /29."""
    started = time.monotonic()
    clients = [server.cli_popen("create", stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(5)]
    results = [(c.wait(300), c.stdout.read().decode(), c.stderr.read().decode()) for c in clients]  # type: ignore[union-attr]
    elapsed = time.monotonic() - started
    assert all(code == 0 for code, _, _ in results), [err for _, _, err in results]
    print(f"\n5 concurrent creates (QEMU/TCG, 2 host cores): all Running after {elapsed:.1f} s")
    return sorted(out.strip() for _, out, _ in results)


def _ips(server: ServerProcess) -> dict[str, str]:
    return {vm.id: vm.ip_address for vm in server.vms().values()}


def _taps(ids: set[str]) -> set[str]:
    return {tap_name_for(vm_id, DEFAULT_TAP_PREFIX) for vm_id in ids}


def _allocations(server: ServerProcess) -> dict[str, str]:
    return {
        str(vm_id): str(address)
        for vm_id, address in server.db_rows("SELECT vm_id, address FROM ip_allocations")
    }


def _tables(server: ServerProcess) -> list[str]:
    return sorted(server.ns.run(["nft", "list", "tables"]).stdout.split("\n")[:-1])


def _only_console(server: ServerProcess, vm_id: str) -> bool:
    vm_dir = server.data_dir / "vms" / vm_id
    try:
        return {p.name for p in vm_dir.iterdir()} <= {"console.log", "console.log.1"}
    except FileNotFoundError:
        return True  # nothing was printed: nothing kept


def _assert_consistent(server: ServerProcess, running: set[str], errored: set[str] | None = None) -> None:
    """Store, processes, directories, TAPs, addresses and rules all describe exactly ``running``
    (and the Error VMs ``errored``, which hold nothing but their row)."""
    errored = errored or set()
    vms = server.vms()
    assert {v for v, vm in vms.items() if vm.state == vm_pb2.VM_STATE_RUNNING} == running
    assert {v for v, vm in vms.items() if vm.state == vm_pb2.VM_STATE_ERROR} == errored
    assert set(vms) == running | errored
    assert set(server.vmm_pids()) == running
    # An Error VM keeps only its console (`clawpot logs`), until it is deleted.
    assert server.vm_dirs() - errored == running
    for vm_id in server.vm_dirs() & errored:
        assert _only_console(server, vm_id), vm_id
    assert server.taps() == _taps(running)
    ips = {v: vm.ip_address for v, vm in vms.items() if vm.ip_address}
    assert set(ips) == running, "an Error VM must not show an address it no longer holds"
    assert len(set(ips.values())) == len(ips), f"duplicate IPs: {ips}"
    assert all(ipaddress.IPv4Address(ip) in SUBNET for ip in ips.values())
    assert _allocations(server) == ips
    assert _tables(server) == ["table bridge clawpot", "table inet clawpot"]
    ruleset = server.ns.run(["nft", "list", "ruleset"]).stdout
    for ip in ips.values():
        assert ruleset.count(f" . {ip}") == 1, f"{ip} should be in port_addrs exactly once"


def _exec_hostnames(server: ServerProcess, vm_ids: list[str]) -> None:
    """`clawpot exec ID -- cat /proc/sys/kernel/hostname` on every VM at once: each answers its own id."""
    clients = {
        vm_id: server.cli_popen(
            "exec",
            vm_id,
            "--",
            "cat",
            "/proc/sys/kernel/hostname",
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for vm_id in vm_ids
    }
    for vm_id, client in clients.items():
        out, err = client.communicate(timeout=120)
        assert (client.returncode, out.decode().strip()) == (0, vm_id), err.decode()


def test_five_concurrent_creates_fill_the_pool_and_a_sixth_is_refused(
    server: ServerProcess, fleet: list[str]
) -> None:
    assert len(set(fleet)) == 5
    _assert_consistent(server, set(fleet))
    assert sorted(_ips(server).values()) == [str(SUBNET[i]) for i in range(2, 7)]
    refused = server.cli("create")
    assert refused.returncode == EXIT_FAILED
    assert (
        refused.stderr.startswith("clawpot: RESOURCE_EXHAUSTED: ") and len(refused.stderr.splitlines()) == 1
    )
    _assert_consistent(server, set(fleet))  # the refused create left no row, TAP, address or process


def test_sigterm_restart_adopts_the_running_vms(server: ServerProcess, fleet: list[str]) -> None:
    pids, ips = server.vmm_pids(), _ips(server)
    rules = nft_rules(server.ns, "inet", "clawpot")
    assert server.terminate() == 0
    assert all(proc_exists(pid) for pid in pids.values()), "VMs must outlive a SIGTERM by default"
    started = time.monotonic()
    server.start()
    print(f"\nrestart adopting 5 VMs: serving after {time.monotonic() - started:.1f} s")
    assert server.vmm_pids() == pids and _ips(server) == ips
    assert nft_rules(server.ns, "inet", "clawpot") == rules
    _assert_consistent(server, set(fleet))
    _exec_hostnames(server, fleet)  # a fresh agent connection on every adopted VM
    result = server.cli("exec", "-i", fleet[0], "--", "sh", "-c", "cat > /var/tmp/adopted.txt", input=b"kept")
    assert result.returncode == 0, result.stderr
    assert server.exec(fleet[0], "cat", "/var/tmp/adopted.txt").stdout == "kept"


def test_kill9_restart_with_a_vm_crashed_meanwhile(
    server: ServerProcess, fleet: list[str], tmp_path: Path
) -> None:
    crashed, survivors = fleet[0], set(fleet[1:])
    pids, ips = server.vmm_pids(), _ips(server)
    rules = nft_rules(server.ns, "inet", "clawpot")
    server.kill9()
    assert all(proc_exists(pid) for pid in pids.values()), "VMs must outlive their server's kill -9"
    server.ns.run(["kill", "-9", str(pids[crashed])])  # by PID, inside the namespace
    wait_until(lambda: not proc_exists(pids[crashed]), 10, "the crashed VM's QEMU to die")
    # Leftovers a crashed server could have produced: a TAP and a VM directory nobody owns.
    orphan_tap = tap_name_for("orphan-vm", DEFAULT_TAP_PREFIX)
    server.ns.run(["ip", "tuntap", "add", "dev", orphan_tap, "mode", "tap"])
    orphan_dir = server.data_dir / "vms" / "orphan-vm"
    orphan_dir.mkdir()
    (orphan_dir / "metadata.json").write_text("{}")
    server.start()
    crashed_vm = server.vms()[crashed]
    assert crashed_vm.state == vm_pb2.VM_STATE_ERROR and "gone" in crashed_vm.error, crashed_vm
    _assert_consistent(server, survivors, {crashed})
    assert {v: p for v, p in server.vmm_pids().items()} == {v: pids[v] for v in survivors}
    # Rewritten, present once; only the crashed VM's own egress chain is gone.
    crashed_chain = "egress_" + tap_name_for(crashed, DEFAULT_TAP_PREFIX).replace("-", "_")
    assert nft_rules(server.ns, "inet", "clawpot") == [r for r in rules if r[0] != crashed_chain]
    _exec_hostnames(server, sorted(survivors))
    local = tmp_path / "f.txt"
    local.write_text("after kill -9")
    server.cli_ok("cp", str(local), f"{fleet[1]}:/var/tmp/f.txt")
    server.cli_ok("cp", f"{fleet[1]}:/var/tmp/f.txt", str(tmp_path / "back.txt"))
    assert (tmp_path / "back.txt").read_text() == "after kill -9"
    on_error = server.exec(crashed, "true")
    assert on_error.returncode == EXIT_FAILED and on_error.stderr.startswith("clawpot: FAILED_PRECONDITION: ")
    # The crashed VM's address is free again and goes to the next VM; nobody shares one.
    replacement = server.create()
    assert server.vms()[replacement].ip_address == ips[crashed]
    _assert_consistent(server, survivors | {replacement}, {crashed})
    fleet.append(replacement)


def test_kill9_during_a_create_leaves_nothing_at_restart(server: ServerProcess, fleet: list[str]) -> None:
    # The Error VM holds only its row; deleting a running one frees an address for the next create.
    server.cli_ok("delete", fleet[0], fleet[1])
    running = set(fleet[2:])
    client = server.cli_popen("create", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: len(server.vmm_pids()) == len(running) + 1, 60, "the new VM's QEMU to run")
        (half,) = set(server.vmm_pids()) - running
        qemu = server.vmm_pids()[half]
        server.ns.run(["kill", "-STOP", str(qemu)])  # hold the guest so the create cannot finish first
        assert server.vms()[half].state == vm_pb2.VM_STATE_STARTING
        server.kill9()
    finally:
        client.wait(60)
        client.stdout.close()  # type: ignore[union-attr]
        client.stderr.close()  # type: ignore[union-attr]
    assert client.returncode != 0
    server.start()
    assert not proc_exists(qemu), "the half-created VM's QEMU must be killed at restart"
    assert server.vms()[half].state == vm_pb2.VM_STATE_ERROR
    _assert_consistent(server, running, {half})
    fleet[:] = [half, *sorted(running)]


def test_adopted_vm_crashing_under_a_running_server_goes_to_error(
    server: ServerProcess, fleet: list[str]
) -> None:
    errored = {v for v, vm in server.vms().items() if vm.state == vm_pb2.VM_STATE_ERROR}
    victim = fleet[-1]  # adopted: started by an earlier server process
    server.ns.run(["kill", "-9", str(server.vmm_pids()[victim])])
    wait_until(lambda: server.vms()[victim].state == vm_pb2.VM_STATE_ERROR, 30, "the VM to be Error")
    wait_until(lambda: _only_console(server, victim), 30, "the crashed VM to keep only its console")
    _assert_consistent(server, set(fleet) - errored - {victim}, errored | {victim})


def test_delete_them_all_at_once(server: ServerProcess, fleet: list[str]) -> None:
    clients = [
        server.cli_popen("delete", vm_id, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for vm_id in fleet
    ]
    for client in clients:
        _, err = client.communicate(timeout=120)
        assert client.returncode == 0, err.decode()
    _assert_consistent(server, set())
    assert server.db_rows("SELECT id FROM vms") == []
