"""`clawpot doctor`'s host checks (clawpot.cli.hostchecks) against real /proc, sockets and a real store."""

from __future__ import annotations

import ipaddress
import socket
import threading
from pathlib import Path

from clawpot import paths
from clawpot.cli import hostchecks
from clawpot.network.config import NetworkConfig
from clawpot.network.ipam import IpAllocator


def test_a_dns_forwarder_on_the_gateway_is_found_and_asked() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        # Listening but silent: found, and said not to answer.
        silent = hostchecks.dns_forwarder(ipaddress.IPv4Address("127.0.0.1"), port)
        assert not silent.ok and "listening, but no DNS answer" in silent.detail
        sock.recvfrom(512)  # that unanswered query
        # A stand-in forwarder that refuses every query (what the real one tells a non-VM).
        responder = threading.Thread(target=_refuse_one, args=(sock,), daemon=True)
        responder.start()
        found = hostchecks.dns_forwarder(ipaddress.IPv4Address("127.0.0.1"), port)
        responder.join(5)
        assert found.ok and found.detail == "listening and answering"
    gone = hostchecks.dns_forwarder(ipaddress.IPv4Address("127.0.0.1"), port)
    assert not gone.ok and not gone.required and "no listener" in gone.detail


def _refuse_one(sock: socket.socket) -> None:
    query, peer = sock.recvfrom(512)
    flags = int.from_bytes(query[2:4], "big") | 0x8000 | 5  # QR (a response), RCODE REFUSED
    sock.sendto(query[:2] + flags.to_bytes(2, "big") + query[4:], peer)


def test_cgroup_mounts_v2_and_v1(tmp_path: Path) -> None:
    v2 = tmp_path / "unified"
    v2.mkdir()
    (v2 / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        f"30 24 0:26 / {v2} rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"
        "31 24 0:27 / /sys/fs/cgroup/pids rw shared:5 - cgroup cgroup rw,pids\n"
        "25 1 8:1 / / rw - ext4 /dev/sda1 rw\n"
    )
    found = hostchecks.cgroups(mountinfo)
    assert (
        found.ok and f"v2 at {v2}: cpuset cpu io memory pids" in found.detail and "v1: pids" in found.detail
    )
    # v1 only, without the memory controller: reported, not ok.
    mountinfo.write_text("31 24 0:27 / /sys/fs/cgroup/cpu rw shared:5 - cgroup cgroup rw,cpu,cpuacct\n")
    lacking = hostchecks.cgroups(mountinfo)
    assert not lacking.ok and lacking.detail == "v1: cpu cpuacct"
    mountinfo.write_text("")
    assert not hostchecks.cgroups(mountinfo).ok


def test_the_real_host_cgroups_are_described() -> None:
    found = hostchecks.cgroups()
    assert found.detail  # whatever this host mounts, it is named


def test_free_addresses_come_from_the_store(tmp_path: Path) -> None:
    config = NetworkConfig.build(bridge="cp-test0", subnet="10.9.0.0/29")  # 5 addresses for guests
    assert hostchecks.address_space(tmp_path, config).detail == "5 free (no state.db yet)"
    allocator = IpAllocator(paths.state_db(tmp_path), config)
    allocator.allocate("vm1")
    allocator.allocate("vm2")
    found = hostchecks.address_space(tmp_path, config)
    assert found.ok and found.detail == "3 of 5 free"
    for n in range(3, 6):
        allocator.allocate(f"vm{n}")
    full = hostchecks.address_space(tmp_path, config)
    assert not full.ok and full.detail == "0 of 5 free"


def test_nftables_and_an_absent_bridge() -> None:
    nft = hostchecks.nftables()
    assert nft.ok, nft.detail  # the suite runs where nft works (root)
    assert nft.detail.startswith("nftables v")
    absent = hostchecks.bridge("cp-nosuchbr")
    assert not absent.ok and not absent.required and "absent" in absent.detail
