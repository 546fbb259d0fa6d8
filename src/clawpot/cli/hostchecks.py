"""`clawpot doctor`'s checks of the host's plumbing: nftables, the bridge, the DNS forwarder, cgroups and
the free address space. Each reads only (files under /proc and /sys, ``nft list``, ``state.db`` opened
read-only) and says in one line what it found; none changes anything.

The bridge and the DNS forwarder exist while a ``clawpot-server`` runs with networking in this network
namespace: their absence is reported, not a failure (``required=False``).
"""

from __future__ import annotations

import ipaddress
import shutil
import sqlite3
import subprocess
from dataclasses import dataclass
from pathlib import Path

from clawpot import paths
from clawpot.network.config import DEFAULT_TABLE, NetworkConfig
from clawpot.network.dnsforward import DNS_PORT, check_forwarder
from clawpot.network.errors import NetworkError

_NFT_TIMEOUT = 10.0


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    # A failed required check makes `doctor` exit 1; an optional one only informs.
    required: bool = True


def nftables() -> Check:
    nft = shutil.which("nft")
    if nft is None:
        return Check("nftables", False, "nft missing: apt-get install nftables")
    try:
        version = _run([nft, "--version"]).strip()
        tables = _run([nft, "list", "tables"]).split("\n")
    except (OSError, subprocess.SubprocessError, RuntimeError) as exc:
        return Check("nftables", False, f"{nft} does not work here: {exc}")
    ours = [t for t in tables if t.strip().endswith(f" {DEFAULT_TABLE}")]
    present = f"table {DEFAULT_TABLE} loaded" if ours else f"no {DEFAULT_TABLE} table (made at server start)"
    return Check("nftables", True, f"{version}; {present}")


def bridge(name: str) -> Check:
    sys_dir = Path("/sys/class/net") / name
    if not sys_dir.exists():
        return Check(f"bridge {name}", False, "absent (clawpot-server creates it at start)", required=False)
    if not (sys_dir / "bridge").is_dir():
        return Check(f"bridge {name}", False, f"{name} exists but is not a bridge", required=False)
    state = _read(sys_dir / "operstate") or "unknown"
    ports = len(list((sys_dir / "brif").iterdir())) if (sys_dir / "brif").is_dir() else 0
    # A bridge without ports reports "down" even when it is set up: only its flags say it is up.
    flags = int(_read(sys_dir / "flags") or "0", 16)
    up = bool(flags & 0x1)
    return Check(
        f"bridge {name}", up, f"{'up' if up else 'down'} (operstate {state}), {ports} TAP(s)", required=False
    )


def dns_forwarder(gateway: ipaddress.IPv4Address, port: int = DNS_PORT) -> Check:
    """A UDP listener on the gateway's port 53 (or on every address) in this namespace, which answers
    a query (``network.dnsforward.check_forwarder``; REFUSED counts: it refuses hosts that are no VM).
    Nothing is sent when nothing listens."""
    listening = _udp_listeners()
    wanted = {(gateway, port), (ipaddress.IPv4Address("0.0.0.0"), port)}
    name = f"DNS forwarder {gateway}:{port}"
    if not wanted & listening:
        return Check(name, False, "no listener (clawpot-server runs it while it serves VMs)", required=False)
    problem = check_forwarder(str(gateway), port)
    if problem is not None:
        return Check(name, False, f"listening, but {problem}", required=False)
    return Check(name, True, "listening and answering", required=False)


def cgroups(mountinfo: Path = Path("/proc/self/mountinfo")) -> Check:
    """Which cgroup hierarchies are mounted and which controllers they offer (per-VM CPU and memory
    accounting needs ``cpu`` and ``memory``)."""
    v2: list[str] = []
    v1: list[str] = []
    v2_controllers: set[str] = set()
    for line in (_read(mountinfo) or "").splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, right_fields = left.split(), right.split()
        fstype, mount_point, options = right_fields[0], fields[4], right_fields[-1]
        if fstype == "cgroup2":
            controllers = (_read(Path(mount_point) / "cgroup.controllers") or "").split()
            v2.append(f"v2 at {mount_point}: {' '.join(controllers) or 'no controllers'}")
            v2_controllers |= set(controllers)
        elif fstype == "cgroup":
            v1 += [o for o in options.split(",") if o in _V1_CONTROLLERS]
    if not v2 and not v1:
        return Check("cgroups", False, "no cgroup filesystem mounted", required=False)
    details = list(v2)
    if v1:
        details.append(f"v1: {' '.join(sorted(set(v1)))}")
    have = v2_controllers | set(v1)
    ok = {"cpu", "memory"} <= have
    return Check("cgroups", ok, "; ".join(details), required=False)


_V1_CONTROLLERS = frozenset(
    {"cpu", "cpuacct", "cpuset", "memory", "pids", "blkio", "io", "devices", "freezer", "net_cls", "hugetlb"}
)


def address_space(data_dir: Path, config: NetworkConfig) -> Check:
    """Free addresses in the VM subnet: the pool minus what ``state.db`` says is allocated."""
    name = f"addresses in {config.subnet}"
    db = paths.state_db(data_dir)
    if not db.exists():
        return Check(name, True, f"{config.pool_size} free (no state.db yet)")
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            rows = conn.execute("SELECT address FROM ip_allocations").fetchall()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return Check(name, False, f"cannot read {db}: {exc}", required=False)
    pool = set(config.subnet.hosts()) - {config.gateway}
    used = sum(1 for (address,) in rows if _ip(address) in pool)
    free = config.pool_size - used
    return Check(name, free > 0, f"{free} of {config.pool_size} free")


def network_config(bridge_name: str, subnet: str) -> NetworkConfig | None:
    try:
        return NetworkConfig.build(bridge=bridge_name, subnet=subnet)
    except NetworkError:
        return None


def _ip(text: str) -> ipaddress.IPv4Address | None:
    try:
        return ipaddress.IPv4Address(text)
    except ValueError:
        return None


def _udp_listeners() -> set[tuple[ipaddress.IPv4Address, int]]:
    """(address, port) of every IPv4 UDP socket bound here (/proc/net/udp: little-endian hex)."""
    found = set()
    for line in (_read(Path("/proc/net/udp")) or "").splitlines()[1:]:
        fields = line.split()
        if len(fields) < 2:
            continue
        address, _, port = fields[1].partition(":")
        try:
            found.add(
                (ipaddress.IPv4Address(int.from_bytes(bytes.fromhex(address), "little")), int(port, 16))
            )
        except ValueError:
            continue
    return found


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _run(argv: list[str]) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=_NFT_TIMEOUT, check=False)
    if result.returncode != 0:
        raise RuntimeError((result.stderr.strip() or f"exit {result.returncode}").splitlines()[0])
    return result.stdout
