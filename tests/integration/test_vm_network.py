"""VM networking through the real server: addresses, reachability, isolation, --ip, cleanup.

The server runs inside a network namespace this module creates (its bridge, TAPs and nftables
tables live and die there); guests are real QEMU/TCG VMs whose only route is the bridge, so no
packet leaves the namespace. Three VMs boot together: A (isolated) and C, D (--allow-peers); a
fourth takes a requested address after A is deleted. The server runs with --stop-vms-on-exit and
its shutdown must restore the namespace to exactly what it was before the server started.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from server_harness import InstalledAssets, ServerProcess, parse_table, server_in_namespace, wait_until
from support import netns as testing
from support.netns import icmp_echo, serve_peer_address, snapshot, tcp_exchange

from clawpot.network.config import DEFAULT_TAP_PREFIX
from clawpot.network.naming import tap_name_for
from clawpot.v1 import vm_pb2

SUBNET = ipaddress.IPv4Network("192.168.100.0/24")
GATEWAY = "192.168.100.1"
HOST_PORT = 8123
EXIT_FAILED = 1


@pytest.fixture(scope="module")
def netserver(
    tmp_path_factory: pytest.TempPathFactory, installed_assets: InstalledAssets
) -> Iterator[tuple[ServerProcess, dict[str, Any]]]:
    with server_in_namespace(
        tmp_path_factory.mktemp("net"), installed_assets, "--stop-vms-on-exit", start=False
    ) as srv:
        before = snapshot(srv.ns)
        srv.start()
        yield srv, before


@pytest.fixture(scope="module")
def server(netserver: tuple[ServerProcess, dict[str, Any]]) -> ServerProcess:
    return netserver[0]


@pytest.fixture(scope="module")
def guests(server: ServerProcess) -> dict[str, str]:
    """name -> VM id: A isolated, C and D allowed to reach each other; created at the same time."""
    flags = {"A": [], "C": ["--allow-peers"], "D": ["--allow-peers"]}
    clients = {
        name: server.cli_popen("create", *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for name, args in flags.items()
    }
    ids = {}
    for name, client in clients.items():
        out, err = client.communicate(timeout=300)
        assert client.returncode == 0, err.decode()
        ids[name] = out.decode().strip()
    return ids


def _ip(server: ServerProcess, vm_id: str) -> str:
    return server.vms()[vm_id].ip_address


def _ping_from(server: ServerProcess, vm_id: str, target: str) -> int:
    return server.exec(vm_id, "ping", "-c", "1", "-W", "3", target).returncode


def test_vms_get_distinct_listed_addresses_and_answer_pings(
    server: ServerProcess, guests: dict[str, str]
) -> None:
    rows = {row["ID"]: row for row in parse_table(server.cli_ok("list"))}
    ips = {name: rows[vm_id]["IP"] for name, vm_id in guests.items()}
    assert len(set(ips.values())) == 3, ips
    for name, vm_id in guests.items():
        ip = ips[name]
        assert ipaddress.IPv4Address(ip) in SUBNET and ip != GATEWAY
        assert json.loads(server.cli_ok("get", vm_id))["ip_address"] == ip
        # The guest really has it: the kernel configured eth0 from the address the server chose.
        assert f"inet {ip}/24" in server.exec(vm_id, "ip", "-4", "addr", "show", "eth0").stdout
        assert server.ns.call(icmp_echo, ip, 5.0), f"host side cannot ping guest {name} at {ip}"
        assert _ping_from(server, vm_id, GATEWAY) == 0, f"guest {name} cannot ping the gateway"
    assert server.taps() == {tap_name_for(v, DEFAULT_TAP_PREFIX) for v in guests.values()}


def test_isolation_unless_both_allow_peers(server: ServerProcess, guests: dict[str, str]) -> None:
    a, c, d = (guests[n] for n in "ACD")
    assert _ping_from(server, c, _ip(server, d)) == 0, "--allow-peers VMs must reach each other"
    assert _ping_from(server, d, _ip(server, c)) == 0
    assert _ping_from(server, a, _ip(server, c)) != 0, "an isolated VM reached a peer"
    assert _ping_from(server, c, _ip(server, a)) != 0, "a peer reached an isolated VM"


def test_guests_cannot_reach_host_services(server: ServerProcess, guests: dict[str, str]) -> None:
    listener = server.ns.spawn(serve_peer_address, [HOST_PORT], GATEWAY)
    try:
        # The service is there: the host side connects (positive control).
        assert server.ns.call(tcp_exchange, GATEWAY, HOST_PORT, 5.0) == GATEWAY
        for name in "AC":
            probe = server.exec(
                guests[name], "timeout", "10", "bash", "-c", f"exec 3<>/dev/tcp/{GATEWAY}/{HOST_PORT}"
            )
            assert probe.returncode != 0, f"guest {name} connected to a host service"
    finally:
        testing.stop(listener)


def test_requested_ip_and_delete_frees_address_and_tap(server: ServerProcess, guests: dict[str, str]) -> None:
    a_ip, c_ip = _ip(server, guests["A"]), _ip(server, guests["C"])
    for ip, code in (
        (c_ip, "ALREADY_EXISTS"),
        ("10.9.9.9", "INVALID_ARGUMENT"),
        (GATEWAY, "INVALID_ARGUMENT"),
        ("192.168.100.255", "INVALID_ARGUMENT"),
        ("not-an-ip", "INVALID_ARGUMENT"),
    ):
        result = server.cli("create", "--ip", ip)
        assert result.returncode == EXIT_FAILED and result.stderr.startswith(f"clawpot: {code}: "), (
            ip,
            result,
        )
        assert len(result.stderr.splitlines()) == 1
    assert set(server.vms()) == set(guests.values()) and len(server.taps()) == 3  # nothing left by those

    server.cli_ok("delete", guests["A"])
    assert tap_name_for(guests["A"], DEFAULT_TAP_PREFIX) not in server.taps()
    allocations = dict(server.db_rows("SELECT vm_id, address FROM ip_allocations"))
    assert guests["A"] not in allocations and a_ip not in allocations.values()
    assert a_ip not in server.ns.run(["nft", "list", "ruleset"]).stdout

    wanted = "192.168.100.200"
    e = server.create("--ip", wanted)
    guests["E"] = e
    del guests["A"]
    assert _ip(server, e) == wanted
    assert f"inet {wanted}/24" in server.exec(e, "ip", "-4", "addr", "show", "eth0").stdout
    assert server.ns.call(icmp_echo, wanted, 5.0)
    assert _ping_from(server, e, GATEWAY) == 0


def test_a_crashed_vm_gives_back_its_address_and_tap(server: ServerProcess, guests: dict[str, str]) -> None:
    e = guests["E"]
    server.ns.run(["kill", "-9", str(server.vmm_pids()[e])])
    wait_until(lambda: tap_name_for(e, DEFAULT_TAP_PREFIX) not in server.taps(), 30, "the TAP to be removed")
    vm = server.vms()[e]
    assert vm.state == vm_pb2.VM_STATE_ERROR and vm.ip_address == "" and "SIGKILL" in vm.error, vm
    assert e not in dict(server.db_rows("SELECT vm_id, address FROM ip_allocations"))
    assert "192.168.100.200" not in server.ns.run(["nft", "list", "ruleset"]).stdout


def test_shutdown_with_stop_vms_restores_the_namespace(
    netserver: tuple[ServerProcess, dict[str, Any]], guests: dict[str, str]
) -> None:
    server, before = netserver
    assert server.vmm_pids() and server.taps()
    assert server.terminate() == 0
    assert server.vmm_pids() == {} and server.vm_dirs() == set()
    assert server.db_rows("SELECT id FROM vms") == []
    assert server.db_rows("SELECT vm_id FROM ip_allocations") == []
    after = snapshot(server.ns)
    assert after == before, "the namespace differs from before the server started"
