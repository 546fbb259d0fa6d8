"""The ``configure`` operation on the real agent process.

Validation runs against a plain host agent, which must also refuse to configure anything: it would
rename and readdress the machine the tests run on. The effects (netlink, sethostname, /etc files) run
in a sandbox: the real agent started by ``unshare --user --keep-caps --net --uts`` with
``--configure-sandbox ETC_DIR``, so it owns a network namespace with a TAP named eth0 (no reader: a
device the kernel treats like a NIC without carrier), a UTS namespace, and writes its /etc files into
a test directory. Capabilities in a child user namespace give no power over the host's namespaces, so
nothing here can touch the host. Sending the gratuitous ARP onto a wire and a guest's reachability are
proven on a real VM (tests/integration/test_guest_identity.py).
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import struct
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from agent_harness import AgentProcess, RawConnection, start_agent, stop_agent

from clawpot.agent import arp, etcfiles
from clawpot.agent.identity import parse_request
from clawpot.agent.protocol import FrameType, decode_json
from clawpot.agent_client import AgentClient, GuestIdentity, ProtocolError, RemoteError, wait_ready
from clawpot.agent_client.identity import parse_result

BOOT = {"address": "10.9.0.2/24", "gateway": "10.9.0.1", "mac": "06:00:0a:09:00:02", "hostname": "boot-name"}
# What the sandbox looks like before each test: the identity a VM booted with ip= and clawpot.* has.
_SETUP = (
    "ip tuntap add dev eth0 mode tap && ip link set eth0 address {mac} && ip link set eth0 up && "
    "ip address add {address} dev eth0 && ip route add default via {gateway} && "
    'echo {hostname} >/proc/sys/kernel/hostname && exec "$@"'
).format(**BOOT)
SANDBOX = ("unshare", "--user", "--keep-caps", "--net", "--uts", "--", "sh", "-c", _SETUP, "sh")


def _sandbox_unavailable() -> str | None:
    probe = subprocess.run(
        [
            "unshare",
            "--user",
            "--keep-caps",
            "--net",
            "--uts",
            "--",
            "ip",
            "tuntap",
            "add",
            "eth0",
            "mode",
            "tap",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        return f"no user+network namespace with a TAP here: {probe.stderr.strip()}"
    return None


# --- validation, shared by the agent and GuestIdentity -----------------------------------------------

BAD_REQUESTS: list[tuple[dict[str, Any], str]] = [
    ({}, "nothing to configure"),
    ({"hostname": ""}, "'hostname' must be a non-empty string"),
    ({"hostname": "a" * 65}, "longer than 64 bytes"),
    ({"hostname": "-opt"}, "dot-separated labels"),
    ({"hostname": "a b"}, "dot-separated labels"),
    ({"hostname": "a..b"}, "dot-separated labels"),
    ({"hostname": 7}, "'hostname' must be a non-empty string"),
    ({"address": "10.0.0.5"}, "'a.b.c.d/prefix'"),
    ({"address": "10.0.0.5/33"}, "prefix '33'"),
    ({"address": "10.0.0.5/0"}, "prefix '0'"),
    ({"address": "10.0.0.5/-1"}, "prefix '-1'"),
    ({"address": "10.0.0.0/24"}, "network or broadcast"),
    ({"address": "10.0.0.255/24"}, "network or broadcast"),
    ({"address": "010.0.0.5/24"}, "not an IPv4 address"),
    ({"address": "10.0.5/24"}, "not an IPv4 address"),
    ({"address": "127.0.0.2/8"}, "not a unicast address"),
    ({"address": "224.0.0.1/24"}, "not a unicast address"),
    ({"address": "fe80::1/64"}, "not an IPv4 address"),
    ({"gateway": "10.0.0.1"}, "'gateway' needs 'address'"),
    ({"address": "10.0.0.5/24", "gateway": "10.0.1.1"}, "not a host of the interface's subnet"),
    ({"address": "10.0.0.5/24", "gateway": "10.0.0.5"}, "the interface's own address"),
    ({"address": "10.0.0.5/24", "gateway": "10.0.0.255"}, "not a host of the interface's subnet"),
    ({"dns": "10.0.0.1"}, "'dns' must be a list"),
    ({"dns": ["10.0.0.1"] * 2}, "lists a server twice"),
    ({"dns": ["1.1.1.1", "1.0.0.1", "8.8.8.8", "9.9.9.9"]}, "at most 3"),
    ({"dns": ["::1"]}, "not an IPv4 address"),
    ({"mac": "06:00:00:00:00"}, "six hex bytes"),
    ({"mac": "06-00-00-00-00-01"}, "six hex bytes"),
    ({"mac": "01:00:5e:00:00:01"}, "multicast"),
    ({"mac": "00:00:00:00:00:00"}, "all zeros"),
    ({"interface": "eth0/../x", "hostname": "a"}, "'interface' must be an interface name"),
    ({"interface": "a" * 16, "hostname": "a"}, "'interface' must be an interface name"),
    ({"hostname": "a", "announce": "yes"}, "'announce' must be true or false"),
    ({"entropy": "not base64!"}, "'entropy' is not valid base64"),
    ({"entropy": "AAAA"}, "'entropy' must be 16-512 bytes, not 3"),
    ({"entropy": 7}, "'entropy' must be base64"),
    ({"clock_ns": 5}, "'clock_ns' must be the host's time"),
    ({"clock_ns": 1.7e18}, "'clock_ns' must be the host's time"),
    ({"clock_ns": True}, "'clock_ns' must be the host's time"),
]
# Fields the host sends as raw values (GuestIdentity takes bytes and a flag for these).
_WIRE_ONLY = ("announce", "entropy", "clock_ns")


@pytest.mark.parametrize(("request_fields", "message"), BAD_REQUESTS)
def test_the_agent_refuses_bad_requests(
    agent: AgentProcess, request_fields: dict[str, Any], message: str
) -> None:
    with RawConnection(agent.socket) as raw:
        raw.handshake()
        raw.send(FrameType.OPEN, 1, json.dumps({"op": "configure", **request_fields}).encode())
        error = raw.error(stream=1)
    assert error["code"] == "bad_request", error
    assert message in str(error["message"]), error


@pytest.mark.parametrize(
    ("request_fields", "message"), [(f, m) for f, m in BAD_REQUESTS if not set(_WIRE_ONLY) & set(f)]
)
def test_guest_identity_refuses_the_same(request_fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        GuestIdentity(**request_fields)


def test_valid_requests_parse_to_normal_form() -> None:
    req = parse_request(
        {
            "op": "configure",
            "address": "192.168.100.7/24",
            "gateway": "192.168.100.1",
            "mac": "06:AB:00:00:00:01",
        }
    )
    assert str(req.address) == "192.168.100.7/24" and req.address is not None
    assert req.address.broadcast == "192.168.100.255"
    assert req.mac == "06:ab:00:00:00:01" and req.interface == "eth0" and req.announce
    assert parse_request({"address": "10.1.2.3/32"}).address is not None  # /32: no broadcast, no gateway
    assert parse_request({"dns": []}).dns == ()
    assert parse_request({"hostname": "vm_01.sandbox", "unknown": 1}).hostname == "vm_01.sandbox"
    longest_vm_id = "a" + "_-9" * 21  # 64 characters, as server/validate.py allows
    assert parse_request({"hostname": longest_vm_id}).hostname == longest_vm_id
    ident = GuestIdentity(
        hostname="h", address="10.0.0.5/24", gateway="10.0.0.1", dns=["10.0.0.1"], mac="06:AA:00:00:00:01"
    )
    assert ident.dns == ("10.0.0.1",) and ident.mac == "06:aa:00:00:00:01"
    assert ident.request() == {
        "op": "configure",
        "interface": "eth0",
        "hostname": "h",
        "address": "10.0.0.5/24",
        "gateway": "10.0.0.1",
        "dns": ["10.0.0.1"],
        "mac": "06:aa:00:00:00:01",
        "announce": True,
    }


async def test_a_host_agent_never_configures_its_host(client: AgentClient) -> None:
    before = socket.gethostname()
    with pytest.raises(RemoteError) as info:
        await client.configure(GuestIdentity(hostname="renamed-by-a-test"))
    assert info.value.code == "not_supported"
    assert "only the guest's agent" in info.value.message
    assert socket.gethostname() == before
    assert (await client.run(["true"])).status.exit_code == 0  # the connection carries on


def test_the_sandbox_option_is_refused_outside_a_user_namespace(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "clawpot.agent",
            "--listen-unix",
            str(tmp_path / "s"),
            "--configure-sandbox",
            "/tmp",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 2
    assert "--configure-sandbox needs the agent to run in its own user namespace" in proc.stderr
    assert not (tmp_path / "s").exists()


def test_results_are_checked_against_what_was_asked() -> None:
    body = {
        "interface": "eth0",
        "hostname": "h",
        "mac": "06:00:00:00:00:01",
        "link_up": True,
        "address": "10.0.0.5/24",
        "addresses": ["10.0.0.5/24"],
        "gateway": "10.0.0.1",
        "dns": ["10.0.0.1"],
        "changed": ["hostname"],
        "announced": True,
        "duration": 0.001,
    }
    result = parse_result(body)
    wanted = GuestIdentity(
        hostname="h", address="10.0.0.5/24", gateway="10.0.0.1", dns=["10.0.0.1"], mac="06:00:00:00:00:01"
    )
    assert result.satisfies(wanted) and result.satisfies(GuestIdentity(hostname="h"))
    assert not result.satisfies(GuestIdentity(hostname="other"))
    assert not result.satisfies(GuestIdentity(address="10.0.0.5/24"))  # asked for no default route
    assert not result.satisfies(GuestIdentity(dns=[]))
    two = parse_result({**body, "addresses": ["10.0.0.5/24", "10.0.0.6/24"]})
    assert not two.satisfies(wanted)  # a second address left behind is not the identity asked for
    down = parse_result({**body, "link_up": False})
    assert not down.satisfies(wanted) and down.satisfies(GuestIdentity(hostname="h"))
    # A copy's refresh: an agent that ignored the fields (no clock_ns, nothing in changed) fails it.
    copy = GuestIdentity(hostname="h").refreshed()
    assert copy.entropy is not None and len(copy.entropy) == 64 and copy.clock
    assert not result.satisfies(copy)
    refreshed = parse_result(
        {**body, "changed": ["clock", "entropy"], "clock_ns": 1_800_000_000 * 10**9, "entropy_credited": True}
    )
    assert refreshed.satisfies(copy) and refreshed.entropy_credited
    assert copy.request()["clock_ns"] >= 1_700_000_000 * 10**9
    for broken in (
        {**body, "changed": ["everything"]},
        {**body, "clock_ns": "soon"},
        {**body, "entropy_credited": 1},
        {**body, "mac": 7},
        {"hostname": "h"},
        {**body, "dns": 1},
    ):
        with pytest.raises(ProtocolError):
            parse_result(broken)


# --- pure helpers -------------------------------------------------------------------------------------


def test_hosts_file_gets_exactly_one_own_line() -> None:
    assert etcfiles.hosts_text(None, "a") == "127.0.0.1\tlocalhost\n127.0.1.1\ta\n"
    current = "127.0.0.1\tlocalhost\n127.0.1.1\told\n10.0.0.9 db\n127.0.1.1 older\n"
    assert etcfiles.hosts_text(current, "new") == "127.0.0.1\tlocalhost\n127.0.1.1\tnew\n10.0.0.9 db\n"
    assert etcfiles.hosts_text("127.0.0.1 localhost\n", "n") == "127.0.0.1 localhost\n127.0.1.1\tn\n"


def test_replace_file_replaces_a_symlink_and_skips_equal_content(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("nameserver 9.9.9.9\n")
    link = tmp_path / "resolv.conf"
    link.symlink_to(target)
    assert etcfiles.replace_file(link, "nameserver 9.9.9.9\n")  # same text, but a link: replaced
    assert not link.is_symlink() and target.read_text() == "nameserver 9.9.9.9\n"
    mtime = link.stat().st_mtime_ns
    assert not etcfiles.replace_file(link, "nameserver 9.9.9.9\n")
    assert link.stat().st_mtime_ns == mtime
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "resolv.conf"]  # no temporary left


def test_the_announcement_is_a_broadcast_arp_request_for_our_own_pair() -> None:
    frame = arp.announcement("06:00:0a:09:00:02", "10.9.0.2")
    assert len(frame) == 60
    assert frame[:6] == b"\xff" * 6 and frame[6:12] == bytes.fromhex("06000a090002")
    assert frame[12:14] == b"\x08\x06"
    htype, ptype, hlen, plen, op = struct.unpack("!HHBBH", frame[14:22])
    assert (htype, ptype, hlen, plen, op) == (1, 0x0800, 6, 4, 1)
    assert frame[22:28] == bytes.fromhex("06000a090002")
    assert frame[28:32] == frame[38:42] == socket.inet_aton("10.9.0.2")


# --- the real effects, in a sandbox ---------------------------------------------------------------------


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[tuple[AgentProcess, Path]]:
    reason = _sandbox_unavailable()
    if reason:
        pytest.skip(reason)
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "hosts").write_text("127.0.0.1\tlocalhost\n127.0.1.1\tboot-name\n")
    (etc / "hostname").write_text("boot-name\n")
    (etc / "resolv.conf").symlink_to("/proc/net/pnp")  # as a kernel ip= boot may leave it
    proc = start_agent(tmp_path / "agent", "--configure-sandbox", str(etc), wrapper=SANDBOX)
    yield proc, etc
    log = proc.log_text()
    stop_agent(proc)
    assert "Traceback" not in log, log


@pytest.fixture
async def sandboxed(sandbox: tuple[AgentProcess, Path]) -> AsyncIterator[AgentClient]:
    c = await wait_ready(sandbox[0].endpoint, 10)
    yield c
    await c.close()


async def _ip_json(client: AgentClient, *args: str) -> Any:
    result = await client.run(["ip", "-json", *args])
    assert result.status.exit_code == 0, result.stderr
    return json.loads(result.stdout)


async def _kernel_view(client: AgentClient) -> dict[str, Any]:
    """The sandbox's identity as iproute2 and procfs show it (independent of the agent's own read-back)."""
    (link,) = await _ip_json(client, "link", "show", "eth0")
    (addrs,) = await _ip_json(client, "-4", "address", "show", "eth0")
    routes = await _ip_json(client, "-4", "route", "show", "default")
    hostname = (await client.run(["cat", "/proc/sys/kernel/hostname"])).stdout.decode().strip()
    return {
        "mac": link["address"],
        "up": "UP" in link["flags"],
        "addresses": [f"{a['local']}/{a['prefixlen']}" for a in addrs["addr_info"]],
        "gateways": [(r.get("gateway"), r.get("dev")) for r in routes],
        "hostname": hostname,
    }


NEW = GuestIdentity(
    hostname="fork-7",
    address="192.168.100.7/24",
    gateway="192.168.100.1",
    dns=["192.168.100.1", "10.0.0.53"],
    mac="06:00:c0:a8:64:07",
)


async def test_configure_replaces_an_existing_identity(
    sandboxed: AgentClient, sandbox: tuple[AgentProcess, Path]
) -> None:
    etc = sandbox[1]
    assert (await _kernel_view(sandboxed))["addresses"] == [BOOT["address"]]
    result = await sandboxed.configure(NEW)
    assert result.satisfies(NEW)
    assert result.addresses == ("192.168.100.7/24",) and result.link_up and result.announced
    assert result.changed == {"mac", "address", "gateway", "hostname", "dns"}
    assert await _kernel_view(sandboxed) == {
        "mac": "06:00:c0:a8:64:07",
        "up": True,
        "addresses": ["192.168.100.7/24"],  # the boot address is gone, not kept as a second one
        "gateways": [("192.168.100.1", "eth0")],
        "hostname": "fork-7",
    }
    assert (etc / "hostname").read_text() == "fork-7\n"
    assert (etc / "hosts").read_text() == "127.0.0.1\tlocalhost\n127.0.1.1\tfork-7\n"
    assert not (etc / "resolv.conf").is_symlink()
    assert etcfiles.nameservers((etc / "resolv.conf").read_text()) == ["192.168.100.1", "10.0.0.53"]
    assert socket.gethostname() != "fork-7"  # the host kept its name

    # The same identity again: nothing to do, nothing rewritten.
    mtimes = {p.name: p.stat().st_mtime_ns for p in etc.iterdir()}
    again = await sandboxed.configure(NEW)
    assert again.satisfies(NEW) and again.changed == frozenset()
    assert {p.name: p.stat().st_mtime_ns for p in etc.iterdir()} == mtimes
    assert (await _kernel_view(sandboxed))["addresses"] == ["192.168.100.7/24"]


async def test_partial_identities_keep_the_rest(sandboxed: AgentClient) -> None:
    result = await sandboxed.configure(GuestIdentity(hostname="only-the-name"))
    assert result.changed == {"hostname"} and not result.announced  # no network field: no ARP
    assert result.address == BOOT["address"] and result.gateway == BOOT["gateway"]
    assert result.mac == BOOT["mac"] and result.hostname == "only-the-name"

    # A new address in the same subnet: the old one (the primary) must go, the new one must stay.
    result = await sandboxed.configure(GuestIdentity(address="10.9.0.77/24", gateway="10.9.0.1"))
    assert result.changed == {"address", "gateway"}  # deleting the last address dropped the old route
    view = await _kernel_view(sandboxed)
    assert view["addresses"] == ["10.9.0.77/24"] and view["gateways"] == [("10.9.0.1", "eth0")]

    # An address without a gateway: no default route.
    result = await sandboxed.configure(GuestIdentity(address="10.9.0.77/24"))
    assert result.changed == {"gateway"} and result.gateway is None
    assert (await _kernel_view(sandboxed))["gateways"] == []

    result = await sandboxed.configure(GuestIdentity(dns=[]))
    assert result.changed == {"dns"} and result.dns == ()


async def test_a_link_that_is_down_comes_up(sandboxed: AgentClient) -> None:
    assert (await sandboxed.run(["ip", "link", "set", "eth0", "down"])).status.exit_code == 0
    result = await sandboxed.configure(GuestIdentity(address="10.9.0.2/24", gateway="10.9.0.1"))
    assert result.link_up
    view = await _kernel_view(sandboxed)
    assert view["up"] and view["gateways"] == [("10.9.0.1", "eth0")]


async def test_failures_are_found_before_anything_changes(
    sandboxed: AgentClient, sandbox: tuple[AgentProcess, Path]
) -> None:
    with pytest.raises(RemoteError) as info:
        await sandboxed.configure(GuestIdentity(hostname="x", mac="06:00:00:00:00:99", interface="eth9"))
    assert info.value.code == "bad_request" and "no network interface 'eth9'" in info.value.message
    etc = sandbox[1]
    os.chmod(etc, 0o555)
    try:
        with pytest.raises(RemoteError) as info:
            await sandboxed.configure(GuestIdentity(hostname="x", mac="06:00:00:00:00:99"))
    finally:
        os.chmod(etc, 0o755)
    assert info.value.code == "not_supported" and "is not writable" in info.value.message
    view = await _kernel_view(sandboxed)
    assert view["hostname"] == "boot-name" and view["mac"] == BOOT["mac"]


async def test_a_vm_without_a_network_still_gets_its_hostname(
    sandboxed: AgentClient, sandbox: tuple[AgentProcess, Path]
) -> None:
    # A server run with --no-network restores VMs that have no eth0: hostname and dns (and clock and
    # entropy) still apply (a restore or fork there used to fail with "no network interface").
    done = await sandboxed.configure(GuestIdentity(hostname="no-net", interface="eth9"))
    assert done.hostname == "no-net" and done.mac == "" and done.addresses == () and not done.link_up
    assert done.changed == {"hostname"}
    assert (sandbox[1] / "hostname").read_text() == "no-net\n"


async def test_raw_result_names_every_field(sandbox: tuple[AgentProcess, Path]) -> None:
    with RawConnection(sandbox[0].socket) as raw:
        raw.handshake()
        raw.send(FrameType.OPEN, 1, json.dumps({"op": "configure", "hostname": "raw"}).encode())
        end = decode_json(raw.frame_of(FrameType.END, FrameType.ERROR, stream=1).payload)
    assert set(end) == {
        "interface",
        "hostname",
        "mac",
        "link_up",
        "address",
        "addresses",
        "gateway",
        "dns",
        "changed",
        "announced",
        "duration",
        "steps",
    }
    assert end["hostname"] == "raw" and end["addresses"] == [BOOT["address"]] and end["dns"] == []


async def test_entropy_is_mixed_in_and_the_clock_needs_the_guest(
    sandboxed: AgentClient, sandbox: tuple[AgentProcess, Path]
) -> None:
    # Without CAP_SYS_ADMIN in the first user namespace the ioctls are refused: the bytes are written
    # to /dev/urandom (mixed in, not credited), and the answer says so. The credited path and the clock
    # step are proven in a real guest (tests/integration/test_fork_pool.py).
    result = await sandboxed.configure(GuestIdentity(hostname="fresh", entropy=os.urandom(64)))
    assert result.entropy_credited is False and "entropy" in result.changed and result.clock_ns is None
    with pytest.raises(RemoteError) as info:
        await sandboxed.configure(GuestIdentity(hostname="late", clock=True))
    assert info.value.code == "io_error" and "configure failed at clock" in info.value.message
    assert "already changed: nothing" in info.value.message


async def test_refresh_alone_needs_no_identity(
    sandboxed: AgentClient, sandbox: tuple[AgentProcess, Path], agent: AgentProcess
) -> None:
    entropy = base64.b64encode(os.urandom(64)).decode()
    with RawConnection(sandbox[0].socket) as raw:
        raw.handshake()
        raw.send(FrameType.OPEN, 1, json.dumps({"op": "refresh", "entropy": entropy}).encode())
        end = decode_json(raw.frame_of(FrameType.END, FrameType.ERROR, stream=1).payload)
        raw.send(FrameType.OPEN, 3, json.dumps({"op": "refresh"}).encode())
        error = raw.error(stream=3)
    assert end["changed"] == ["entropy"] and end["entropy_credited"] is False, end
    assert error["code"] == "bad_request" and "nothing to refresh" in error["message"]
    # The host client sends both: the clock step needs the guest (CAP_SYS_TIME), refused here.
    with pytest.raises(RemoteError) as info:
        await sandboxed.refresh()
    assert info.value.code == "io_error" and "refresh failed at clock" in info.value.message
    with RawConnection(agent.socket) as raw:  # a plain host agent: never its host's clock
        raw.handshake()
        raw.send(FrameType.OPEN, 1, json.dumps({"op": "refresh", "entropy": entropy}).encode())
        assert raw.error(stream=1)["code"] == "not_supported"
