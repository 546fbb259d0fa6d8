"""Throwaway network namespaces for tests, and guests emulated by veth pairs.

Tests never touch the host's own network: ``NetNamespace.create()`` makes ``clawpot-test-<random>``
(``ip netns add``), runs code inside it (a forked child that enters it with setns, or a command
under ``ip netns exec``) and ``delete()`` kills what still runs inside it and removes it. VM-level
tests use the same: run the server with ``ns.popen``, and talk to it over a unix socket.

A TAP without a VM carries no traffic, so ``plug_guest`` stands in for a VM: it replaces the slot's
TAP with a veth pair of the same name whose other end, in a guest namespace, has the slot's MAC,
address and default route. The firewall cannot tell the difference: it matches port names.
Helpers for traffic (ICMP echo, TCP connect, a TCP listener) keep every wait short and bounded.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import pickle
import secrets
import select
import shutil
import signal
import socket
import struct
import subprocess
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pyroute2 import IPRoute

from clawpot.network.slot import NetworkSlot

NETNS_RUN_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000
T = TypeVar("T")


class NamespaceError(RuntimeError):
    pass


def enter_netns(name: str) -> None:
    """Move the calling thread into the named namespace (setns(2); os.setns needs Python 3.12)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(NETNS_RUN_DIR / name, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"setns into {name}: {os.strerror(code)}")
    finally:
        os.close(fd)


class NetNamespace:
    def __init__(self, name: str) -> None:
        self.name = name

    @classmethod
    def create(cls, prefix: str = "clawpot-test") -> NetNamespace:
        name = f"{prefix}-{secrets.token_hex(4)}"
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True, timeout=30)
        ns = cls(name)
        try:
            ns.run(["ip", "link", "set", "lo", "up"])
        except BaseException:
            ns.delete()
            raise
        return ns

    def __enter__(self) -> NetNamespace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.delete()

    @property
    def path(self) -> Path:
        return NETNS_RUN_DIR / self.name

    def exists(self) -> bool:
        return self.path.exists()

    def pids(self) -> list[int]:
        """Processes whose network namespace is this one."""
        try:
            ref = os.stat(self.path)
        except FileNotFoundError:
            return []
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                st = os.stat(entry / "ns" / "net")
                if (st.st_dev, st.st_ino) == (ref.st_dev, ref.st_ino):
                    found.append(int(entry.name))
        return found

    def delete(self) -> None:
        """Kill whatever still runs inside (it was started by the test), then remove the namespace."""
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.exists():
            subprocess.run(["ip", "netns", "del", self.name], check=True, capture_output=True, timeout=30)

    # -- running things inside --------------------------------------------------------------------

    def argv(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def run(
        self, argv: Sequence[str], *, timeout: float = 60, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(self.argv(argv), capture_output=True, text=True, timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise NamespaceError(
                f"{' '.join(argv)} in {self.name} exited {proc.returncode}: {proc.stderr.strip()}"
            )
        return proc

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[str]:
        return subprocess.Popen(self.argv(argv), text=True, **kwargs)

    def ip_json(self, *args: str) -> Any:
        """``ip -j ARGS`` inside the namespace, parsed (for observing state in tests)."""
        return json.loads(self.run(["ip", "-j", *args]).stdout or "[]")

    def call(self, fn: Callable[..., T], *args: Any, timeout: float = 60) -> T:
        """Run ``fn(*args)`` in a forked child inside the namespace; return its result or raise its error."""
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: never returns into the caller's stack
            os.close(read_fd)
            status = 0
            try:
                enter_netns(self.name)
                payload = pickle.dumps(("ok", fn(*args)))
            except BaseException as exc:
                status = 1
                try:
                    payload = pickle.dumps(("err", exc))
                except Exception:
                    payload = pickle.dumps(("err", NamespaceError(traceback.format_exc())))
            with os.fdopen(write_fd, "wb") as out:
                out.write(payload)
            os._exit(status)
        os.close(write_fd)
        try:
            data = _read_all(read_fd, timeout)
        except TimeoutError:
            os.kill(pid, signal.SIGKILL)
            raise NamespaceError(
                f"{getattr(fn, '__name__', fn)} in {self.name} took over {timeout} s"
            ) from None
        finally:
            os.close(read_fd)
            os.waitpid(pid, 0)
        if not data:
            raise NamespaceError(f"{getattr(fn, '__name__', fn)} in {self.name} died without a result")
        kind, value = pickle.loads(data)
        if kind == "err":
            raise value
        return value  # type: ignore[no-any-return]

    def spawn(self, fn: Callable[..., object], *args: Any, ready_timeout: float = 15) -> int:
        """Fork a long-running ``fn(ready, *args)`` inside the namespace; returns once it called ready().

        The caller owns the child: kill it by the returned pid (``delete()`` also does).
        """
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            try:
                enter_netns(self.name)

                def ready() -> None:
                    os.write(write_fd, b"R")

                fn(ready, *args)
            finally:
                os._exit(0)
        os.close(write_fd)
        try:
            if _read_all(read_fd, ready_timeout, want=1) != b"R":
                raise NamespaceError(
                    f"{getattr(fn, '__name__', fn)} in {self.name} exited before it was ready"
                )
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise
        finally:
            os.close(read_fd)
        return pid


def _read_all(fd: int, timeout: float, want: int | None = None) -> bytes:
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    size = 0
    while want is None or size < want:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        readable, _, _ = select.select([fd], [], [], remaining)
        if not readable:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def stop(pid: int) -> None:
    """Kill and reap a child started by ``spawn``."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def netns_unavailable_reason() -> str | None:
    """Why namespace tests cannot run here (for pytest.skip), or None when they can."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces, bridges, TAPs and nftables rules"
    for tool, package in (("ip", "iproute2"), ("nft", "nftables")):
        if not (shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")):
            return f"{tool} not found: install the {package} package"
    if not Path("/dev/net/tun").exists():
        return "/dev/net/tun is missing (kernel CONFIG_TUN)"
    return None


def snapshot(ns: NetNamespace) -> dict[str, Any]:
    """Everything a test compares to prove nothing else in the namespace changed."""
    ruleset = json.loads(ns.run(["nft", "-j", "list", "ruleset"]).stdout or '{"nftables": []}')
    return {
        "links": ns.ip_json("link", "show"),
        "addresses": ns.ip_json("address", "show"),
        "routes4": ns.ip_json("-4", "route", "show", "table", "all"),
        "routes6": ns.ip_json("-6", "route", "show", "table", "all"),
        "nft": [_without_handles(item) for item in ruleset["nftables"] if "metainfo" not in item],
        "ip_forward": ns.run(["cat", "/proc/sys/net/ipv4/ip_forward"]).stdout.strip(),
    }


def _without_handles(value: Any) -> Any:
    # Handles number objects in creation order: an atomically replaced table gets new ones.
    if isinstance(value, dict):
        return {k: _without_handles(v) for k, v in value.items() if k != "handle"}
    if isinstance(value, list):
        return [_without_handles(v) for v in value]
    return value


def nft_rules(ns: NetNamespace, family: str, table: str) -> list[Any]:
    """The rules of one table as (chain, expression) JSON, handles dropped; [] if there is none."""
    proc = ns.run(["nft", "-j", "list", "table", family, table], check=False)
    if proc.returncode != 0:
        return []
    items = json.loads(proc.stdout)["nftables"]
    return [(i["rule"]["chain"], i["rule"]["expr"]) for i in items if "rule" in i]


def nft_set(ns: NetNamespace, family: str, table: str, name: str) -> list[Any]:
    items = json.loads(ns.run(["nft", "-j", "list", "set", family, table, name]).stdout)["nftables"]
    elements: list[Any] = next(i["set"] for i in items if "set" in i).get("elem", [])
    return elements


# -- emulated guests --------------------------------------------------------------------------------


def plug_guest(host: NetNamespace, guest: NetNamespace, slot: NetworkSlot) -> None:
    """Stand a namespace in for the VM of ``slot``: veth named like its TAP, far end as its eth0."""
    peer = "cpg" + secrets.token_hex(4)
    host.call(_plug_host_side, slot, peer, guest.name)
    guest.call(_configure_guest, slot, peer)


def _plug_host_side(slot: NetworkSlot, peer: str, guest_ns: str) -> None:
    with IPRoute() as ipr:
        bridge = ipr.link_lookup(ifname=slot.bridge)[0]
        for index in ipr.link_lookup(ifname=slot.tap_name):
            ipr.link("del", index=index)
        ipr.link("add", ifname=slot.tap_name, kind="veth", peer=peer)
        port = ipr.link_lookup(ifname=slot.tap_name)[0]
        ipr.link("set", index=port, master=bridge, state="up")
        ipr.link("set", index=ipr.link_lookup(ifname=peer)[0], net_ns_fd=str(NETNS_RUN_DIR / guest_ns))


def _configure_guest(slot: NetworkSlot, peer: str) -> None:
    with IPRoute() as ipr:
        index = ipr.link_lookup(ifname=peer)[0]
        ipr.link("set", index=index, ifname="eth0", address=slot.mac)
        ipr.addr("add", index=index, address=str(slot.address), prefixlen=slot.prefixlen)
        ipr.link("set", index=index, state="up")
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        ipr.route("add", dst="0.0.0.0/0", gateway=str(slot.gateway))


# -- traffic (call these inside a namespace with NetNamespace.call) ---------------------------------


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def icmp_echo(dst: str, timeout: float = 5.0, source: str | None = None) -> bool:
    """One ICMP echo request (raw socket, root); True if the matching reply came back in time."""
    ident, seq = os.getpid() & 0xFFFF, 1
    payload = b"clawpot-test"
    header = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
    packet = struct.pack("!BBHHH", 8, 0, _checksum(header + payload), ident, seq) + payload
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as sock:
        if source:
            sock.bind((source, 0))
        try:
            sock.sendto(packet, (dst, 0))
        except OSError:
            return False
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            sock.settimeout(remaining)
            try:
                data, (addr, _) = sock.recvfrom(2048)
            except (TimeoutError, OSError):
                return False
            ihl = (data[0] & 0x0F) * 4
            kind, _, _, rid, rseq = struct.unpack("!BBHHH", data[ihl : ihl + 8])
            if addr == dst and kind == 0 and (rid, rseq) == (ident, seq):
                return True
    return False


def tcp_exchange(dst: str, port: int, timeout: float = 5.0) -> str:
    """Connect and read what the server says: the peer address it saw, or the error's errno name."""
    try:
        with socket.create_connection((dst, port), timeout=timeout) as sock:
            return sock.recv(256).decode()
    except TimeoutError:
        return "timeout"
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc))


def serve_peer_address(ready: Callable[[], None], ports: Sequence[int], host: str = "0.0.0.0") -> None:
    """Listen on TCP ``ports``; tell every client the address it connected from, then close."""
    listeners = []
    for port in ports:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(16)
        listeners.append(sock)
    ready()
    while True:
        readable, _, _ = select.select(listeners, [], [])
        for sock in readable:
            conn, (addr, _) = sock.accept()
            with conn:
                conn.sendall(addr.encode())
