"""Guest DNS, egress policy, isolation and published ports through the real server and real VMs.

The server runs in a namespace this module creates; a second namespace plays "the internet"
(support/internet.py): two addresses (ALLOWED, DENIED) with a TCP service, a DNS server serving the
test's own names (the server's --dns-upstream), and 169.254.169.254, which the server's namespace
really routes there. Three QEMU/TCG VMs boot once and are shared, their policies changed on the fly:

- ``open``:   the default policy, with two published ports (loopback and the server's outside address);
- ``strict``: --allow-out allowed.clawpot.test --deny-out denied.clawpot.test (pinned DNS answers);
- ``sealed``: --no-internet.

One probe exec per check runs every connection and lookup in parallel inside the guest (a blocked
connection is a timeout, so they must not queue).
"""

from __future__ import annotations

import json
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from server_harness import InstalledAssets, ServerProcess, server_in_namespace, wait_until
from support.internet import ALLOWED, DENIED, METADATA, SERVER_SIDE, Internet, serve_dns
from support.netns import nft_set, serve_peer_address, tcp_exchange

from clawpot.network.config import DEFAULT_TAP_PREFIX
from clawpot.network.naming import tap_name_for

SERVICE_PORT = 8080
HOST_ONLY_PORT = 9000
NAMES = {"allowed.clawpot.test": ALLOWED, "denied.clawpot.test": DENIED, "other.clawpot.test": ALLOWED}
DNS_TTL = 120
GUEST_HTTP_PORT = 8000
LOOPBACK_PUBLISH = 18080
OUTSIDE_PUBLISH = 18081

# Runs in the guest: every target at once; prints {target: result}. tcp=HOST:PORT -> what the service
# said (the address it saw) or error:<kind>; dns=NAME -> the address or error:<kind>.
PROBE = """
import json, socket, sys
from concurrent.futures import ThreadPoolExecutor
def probe(t):
    kind, _, arg = t.partition("=")
    try:
        if kind == "tcp":
            host, port = arg.rsplit(":", 1)
            with socket.create_connection((host, int(port)), timeout=4) as s:
                return s.recv(64).decode() or "ok"
        return socket.gethostbyname(arg)
    except Exception as e:
        return "error:" + type(e).__name__
with ThreadPoolExecutor(len(sys.argv)) as pool:
    print(json.dumps(dict(zip(sys.argv[1:], pool.map(probe, sys.argv[1:])))))
"""


@dataclass
class World:
    server: ServerProcess
    internet: Internet
    vms: dict[str, str]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, installed_assets: InstalledAssets) -> Iterator[World]:
    with server_in_namespace(tmp_path_factory.mktemp("egress"), installed_assets, start=False) as server:
        internet = Internet.build(server.ns)
        try:
            internet.ns.spawn(serve_peer_address, [80, SERVICE_PORT])
            internet.ns.spawn(serve_dns, ALLOWED, NAMES, DNS_TTL)
            server.ns.spawn(serve_peer_address, [HOST_ONLY_PORT], SERVER_SIDE)
            server.start("--dns-upstream", ALLOWED)
            flags = {
                "open": [
                    "--publish",
                    f"{LOOPBACK_PUBLISH}:{GUEST_HTTP_PORT}",
                    "--publish",
                    f"{SERVER_SIDE}:{OUTSIDE_PUBLISH}:{GUEST_HTTP_PORT}/tcp",
                ],
                "strict": ["--allow-out", "allowed.clawpot.test", "--deny-out", "denied.clawpot.test"],
                "sealed": ["--no-internet"],
            }
            clients = {
                name: server.cli_popen("create", *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                for name, args in flags.items()
            }
            vms = {}
            for name, client in clients.items():
                out, err = client.communicate(timeout=300)
                assert client.returncode == 0, f"{name}: {err.decode()}\n{server.log_tail()}"
                vms[name] = out.decode().strip()
            yield World(server, internet, vms)
        finally:
            internet.delete()


def probe(world: World, name: str, *targets: str) -> dict[str, str]:
    result = world.server.exec(world.vms[name], "python3", "-c", PROBE, *targets)
    assert result.returncode == 0, result.stderr
    found: dict[str, str] = json.loads(result.stdout)
    return found


def tcp(host: str, port: int = SERVICE_PORT) -> str:
    return f"tcp={host}:{port}"


def reached(answer: str) -> bool:
    return answer == SERVER_SIDE  # the internet's service saw the server's address (masquerade)


def http_status(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return str(reply.status)
    except Exception as exc:
        return f"error:{type(exc).__name__}"


def test_default_vm_reaches_the_internet_and_resolves_through_the_gateway(world: World) -> None:
    names = ("dns=allowed.clawpot.test", "dns=nowhere.clawpot.test")
    got = probe(world, "open", tcp(ALLOWED), tcp(DENIED), *names)
    assert reached(got[tcp(ALLOWED)]) and reached(got[tcp(DENIED)]), got
    assert got["dns=allowed.clawpot.test"] == ALLOWED, got  # served by the test, through the gateway
    assert got["dns=nowhere.clawpot.test"].startswith("error:"), got


def test_metadata_range_and_host_addresses_are_unreachable(world: World) -> None:
    # Positive controls: the server's namespace does route the metadata address, and the host-only
    # service on the server's outside address answers the host itself.
    assert world.server.ns.call(tcp_exchange, METADATA, 80, 5.0) == SERVER_SIDE
    assert world.server.ns.call(tcp_exchange, SERVER_SIDE, HOST_ONLY_PORT, 5.0) == SERVER_SIDE
    got = probe(world, "open", tcp(METADATA, 80), tcp(METADATA), tcp(SERVER_SIDE, HOST_ONLY_PORT))
    assert all(answer.startswith("error:") for answer in got.values()), got


def test_allow_list_admits_only_pinned_answers_of_allowed_domains(world: World) -> None:
    before = probe(world, "strict", tcp(ALLOWED), tcp(DENIED))
    assert not reached(before[tcp(ALLOWED)]) and not reached(before[tcp(DENIED)]), before
    names = probe(world, "strict", *(f"dns={name}" for name in NAMES))
    assert names["dns=allowed.clawpot.test"] == ALLOWED, names
    # Denied and not-allowed names are refused by the gateway (no tunnelling data out through DNS).
    assert names["dns=denied.clawpot.test"].startswith("error:"), names
    assert names["dns=other.clawpot.test"].startswith("error:"), names
    tap = tap_name_for(world.vms["strict"], DEFAULT_TAP_PREFIX).replace("-", "_")
    pinned = nft_set(world.server.ns, "inet", "clawpot", f"pin_{tap}")
    assert any(ALLOWED in json.dumps(e) for e in pinned), pinned
    after = probe(world, "strict", tcp(ALLOWED), tcp(DENIED))
    assert reached(after[tcp(ALLOWED)]) and not reached(after[tcp(DENIED)]), after


def test_no_internet_reaches_nothing_and_gets_no_dns(world: World) -> None:
    got = probe(world, "sealed", tcp(ALLOWED), tcp(DENIED), tcp(METADATA, 80), "dns=allowed.clawpot.test")
    assert all(answer.startswith("error:") for answer in got.values()), got


def test_policy_change_on_a_running_vm(world: World) -> None:
    server, sealed = world.server, world.vms["sealed"]
    bad = server.cli("network", sealed, "--deny-out", "not a network")
    assert bad.returncode == 1 and bad.stderr.startswith("clawpot: INVALID_ARGUMENT: "), bad
    out = server.cli_ok("network", sealed, "--internet", "--deny-out", f"{DENIED}/32")
    assert "internet: yes" in out and f"{DENIED}/32" in out, out
    got = probe(world, "sealed", tcp(ALLOWED), tcp(DENIED), "dns=denied.clawpot.test")
    assert reached(got[tcp(ALLOWED)]) and not reached(got[tcp(DENIED)]), got
    assert got["dns=denied.clawpot.test"] == DENIED, got  # denied by address, not by name
    assert server.vms()[sealed].egress.deny_out == [f"{DENIED}/32"]


def test_published_ports_answer_from_the_host(world: World) -> None:
    server, vm = world.server, world.vms["open"]
    serve = f"nohup python3 -m http.server {GUEST_HTTP_PORT} >/dev/null 2>&1 </dev/null &"
    assert server.exec(vm, "sh", "-c", serve).returncode == 0
    url = f"http://127.0.0.1:{LOOPBACK_PUBLISH}/"
    wait_until(lambda: server.ns.call(http_status, url) == "200", 60, "the published port to answer", 0.5)
    # From "the internet" to the server's outside address (prerouting DNAT).
    assert world.internet.ns.call(http_status, f"http://{SERVER_SIDE}:{OUTSIDE_PUBLISH}/") == "200"
    listed = server.cli_ok("port", vm).splitlines()
    assert sorted(listed) == [
        f"{SERVER_SIDE}:{OUTSIDE_PUBLISH} -> {GUEST_HTTP_PORT}/tcp",
        f"127.0.0.1:{LOOPBACK_PUBLISH} -> {GUEST_HTTP_PORT}/tcp",
    ], listed
    # The same host port again: ALREADY_EXISTS, and nothing is left behind.
    vms_before, taps_before = set(server.vms()), server.taps()
    clash = server.cli("create", "--publish", f"{LOOPBACK_PUBLISH}:80")
    assert clash.returncode == 1 and clash.stderr.startswith("clawpot: ALREADY_EXISTS: "), clash
    assert set(server.vms()) == vms_before and server.taps() == taps_before


def test_policies_and_ports_survive_a_server_restart(world: World) -> None:
    server = world.server
    assert server.terminate() == 0  # without --stop-vms-on-exit: the VMs keep running
    server.start("--dns-upstream", ALLOWED)
    assert set(server.vms()) == set(world.vms.values())
    sealed = probe(world, "sealed", tcp(ALLOWED), tcp(DENIED))
    assert reached(sealed[tcp(ALLOWED)]) and not reached(sealed[tcp(DENIED)]), sealed
    strict = probe(world, "strict", "dns=allowed.clawpot.test", tcp(DENIED))
    assert strict["dns=allowed.clawpot.test"] == ALLOWED and not reached(strict[tcp(DENIED)]), strict
    assert reached(probe(world, "strict", tcp(ALLOWED))[tcp(ALLOWED)])
    assert server.ns.call(http_status, f"http://127.0.0.1:{LOOPBACK_PUBLISH}/") == "200"


def test_published_port_stops_answering_after_delete(world: World) -> None:
    server = world.server
    server.cli_ok("delete", world.vms.pop("open"))
    assert server.ns.call(http_status, f"http://127.0.0.1:{LOOPBACK_PUBLISH}/").startswith("error:")
    assert server.db_rows("SELECT * FROM port_forwards") == []
    publish = server.ns.run(["nft", "list", "map", "inet", "clawpot", "publish"]).stdout
    assert str(LOOPBACK_PUBLISH) not in publish
