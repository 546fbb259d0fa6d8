"""Clawpot's nftables rules: NAT for the guest subnet and isolation, in tables Clawpot owns.

Two tables, both named after ``config.table`` (docs/networking.md explains every rule):

- ``inet <table>``: masquerade the subnet out of any non-bridge interface; guests may reach the host
  itself only for DNS on the gateway (udp/tcp 53) and ping of the gateway, never 169.254.0.0/16 (the
  link-local and cloud metadata range); nothing from outside opens connections into guests except
  through a published port (the ``publish`` DNAT map). Each VM's forwarded packets go through its own
  egress chain (``vmrules``: --allow-out, --deny-out, --no-internet, pinned DNS answers).
- ``bridge <table>``: frames between guests on the bridge are dropped unless both ports are in the
  ``peers`` set; each port may only send from its own MAC and IPv4 address (no spoofing a neighbour).
  Guest-to-guest traffic is bridged, never routed, so only the bridge family sees it.

The whole ruleset is rendered from the allocations and policies and applied as one ``nft -f -``
transaction that creates, deletes and recreates both tables: repeating it leaves every rule present
exactly once, and no packet ever sees a half-applied state. Attaching or detaching a VM does that; a
policy change or a DNS pin only rewrites one VM's chain and sets (``update``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from clawpot.network import vmrules
from clawpot.network.config import NetworkConfig
from clawpot.network.errors import FirewallError, ToolMissing
from clawpot.network.policydb import VmNetworkPolicy
from clawpot.network.slot import NetworkSlot

FAMILIES = ("inet", "bridge")
NFT_TIMEOUT_S = 30.0
# Link-local, where clouds serve instance metadata (169.254.169.254): never reachable from a guest.
LINK_LOCAL = "169.254.0.0/16"


def find_nft() -> str:
    for candidate in (shutil.which("nft"), shutil.which("nft", path="/usr/sbin:/sbin")):
        if candidate:
            return candidate
    raise ToolMissing(
        "nft not found on PATH or in /usr/sbin: install the nftables package (apt-get install nftables)"
    )


def _elements(values: Iterable[str]) -> str:
    items = sorted(set(values))
    return f"\t\telements = {{ {', '.join(items)} }}\n" if items else ""


def _set(name: str, type_: str, values: Iterable[str]) -> str:
    return f"\tset {name} {{\n\t\ttype {type_}\n{_elements(values)}\t}}\n"


def _map(name: str, type_: str, values: Sequence[str]) -> str:
    elements = f"\t\telements = {{ {', '.join(values)} }}\n" if values else ""
    return f"\tmap {name} {{\n\t\ttype {type_}\n{elements}\t}}\n"


def render(
    config: NetworkConfig,
    slots: Sequence[NetworkSlot],
    policies: Mapping[str, VmNetworkPolicy] | None = None,
    pins: Mapping[str, Mapping[str, int]] | None = None,
) -> str:
    """The complete nft script replacing Clawpot's tables with ones describing ``slots``.

    ``policies`` by VM id (absent: the default policy, no ports); ``pins`` by VM id: pinned address ->
    seconds left.
    """
    policies = policies or {}
    pins = pins or {}
    slots = sorted(slots, key=lambda s: s.tap_name)  # the same state renders the same text
    br = json.dumps(config.bridge)  # nft quotes strings like JSON does
    gw, net, table = config.gateway, config.subnet, config.table
    per_vm = "".join(
        vmrules.render_objects(s, policies.get(s.vm_id, VmNetworkPolicy()).egress, pins.get(s.vm_id, {}))
        for s in slots
    )
    forwards = sorted(
        ((s, p) for s in slots for p in policies.get(s.vm_id, VmNetworkPolicy()).ports), key=lambda f: f[1]
    )
    ports = [json.dumps(s.tap_name) for s in slots]
    peers = [json.dumps(s.tap_name) for s in slots if s.allow_peers]
    macs = [f"{json.dumps(s.tap_name)} . {s.mac}" for s in slots]
    addrs = [f"{json.dumps(s.tap_name)} . {s.address}" for s in slots]
    inet = (
        f"table inet {table} {{\n"
        + _map("egress", "ipv4_addr : verdict", vmrules.egress_map_elements(slots))
        + _map(
            "publish",
            "ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service",
            vmrules.publish_map_elements(forwards),
        )
        + per_vm
        + f"""\tchain prerouting {{
\t\ttype filter hook prerouting priority raw; policy accept;
\t\tiifname {br} ip daddr 127.0.0.0/8 drop
\t}}
\tchain dnat_in {{
\t\ttype nat hook prerouting priority dstnat; policy accept;
\t\tiifname != {br} meta l4proto {{ tcp, udp }} dnat ip to ip daddr . meta l4proto . th dport map @publish
\t}}
\tchain dnat_local {{
\t\ttype nat hook output priority -100; policy accept;
\t\tmeta l4proto {{ tcp, udp }} dnat ip to ip daddr . meta l4proto . th dport map @publish
\t}}
\tchain input {{
\t\ttype filter hook input priority filter; policy accept;
\t\tiifname {br} ct state established,related accept
\t\tiifname {br} ip daddr {gw} meta l4proto {{ tcp, udp }} th dport 53 accept
\t\tiifname {br} ip daddr {gw} icmp type echo-request accept
\t\tiifname {br} reject with icmpx admin-prohibited
\t}}
\tchain forward {{
\t\ttype filter hook forward priority filter; policy accept;
\t\tiifname {br} oifname {br} accept
\t\tiifname {br} ip saddr != {net} drop
\t\tiifname {br} meta nfproto != ipv4 drop
\t\tiifname {br} ct status dnat accept
\t\tiifname {br} ip daddr {LINK_LOCAL} drop
\t\tiifname {br} ip saddr vmap @egress
\t\tiifname {br} accept
\t\toifname {br} ct state established,related accept
\t\toifname {br} ct status dnat accept
\t\toifname {br} drop
\t}}
\tchain postrouting {{
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tip saddr {net} oifname != {br} masquerade
\t\toifname {br} ip saddr 127.0.0.0/8 ct status dnat masquerade
\t}}
}}
"""
    )
    bridge = (
        f"table bridge {table} {{\n"
        + _set("ports", "ifname", ports)
        + _set("peers", "ifname", peers)
        + _set("port_macs", "ifname . ether_addr", macs)
        + _set("port_addrs", "ifname . ipv4_addr", addrs)
        + """\tchain prerouting {
\t\ttype filter hook prerouting priority filter; policy accept;
\t\tiifname != @ports accept
\t\tiifname . ether saddr != @port_macs drop
\t\tether type ip iifname . ip saddr != @port_addrs drop
\t\tether type arp iifname . arp saddr ip != @port_addrs drop
\t\tether type != { ip, arp } drop
\t}
\tchain forward {
\t\ttype filter hook forward priority filter; policy accept;
\t\tiifname @peers oifname @peers accept
\t\tiifname @ports drop
\t\toifname @ports drop
\t}
}
"""
    )
    # "table X" first makes the delete valid when the table does not exist yet.
    return (
        "# generated by clawpot: replaced whole on every change\n"
        + "".join(f"table {family} {table}\ndelete table {family} {table}\n" for family in FAMILIES)
        + inet
        + bridge
    )


def render_removal(config: NetworkConfig) -> str:
    return "".join(
        f"table {family} {config.table}\ndelete table {family} {config.table}\n" for family in FAMILIES
    )


class Firewall:
    """Applies and removes Clawpot's tables with the ``nft`` binary in the current network namespace."""

    def __init__(self, config: NetworkConfig, nft: str | None = None) -> None:
        self.config = config
        self._nft = nft

    @property
    def nft(self) -> str:
        if self._nft is None:
            self._nft = find_nft()
        elif not os.access(self._nft, os.X_OK):
            raise ToolMissing(f"{self._nft} is not an executable nft: install the nftables package")
        return self._nft

    def apply(
        self,
        slots: Sequence[NetworkSlot],
        policies: Mapping[str, VmNetworkPolicy] | None = None,
        pins: Mapping[str, Mapping[str, int]] | None = None,
    ) -> None:
        self._run(["-f", "-"], render(self.config, slots, policies, pins), "apply Clawpot's nftables ruleset")

    def update(self, script: str, action: str) -> None:
        """Run a script of nft commands (``vmrules.render_update`` or ``render_pin``) as one transaction."""
        self._run(["-f", "-"], script, action)

    def remove(self) -> None:
        self._run(["-f", "-"], render_removal(self.config), "remove Clawpot's nftables tables")

    def tables(self) -> list[tuple[str, str]]:
        """Clawpot's tables present now, as (family, name)."""
        found = []
        for item in self.ruleset():
            table = item.get("table")
            if table and table.get("name") == self.config.table and table.get("family") in FAMILIES:
                found.append((str(table["family"]), str(table["name"])))
        return found

    def ruleset(self) -> list[dict[str, Any]]:
        """The namespace's whole ruleset as nft's JSON objects (metainfo dropped)."""
        out = self._run(["-j", "list", "ruleset"], None, "list the nftables ruleset")
        items: list[dict[str, Any]] = json.loads(out or '{"nftables": []}')["nftables"]
        return [item for item in items if "metainfo" not in item]

    def _run(self, args: list[str], stdin: str | None, action: str) -> str:
        try:
            proc = subprocess.run(
                [self.nft, *args],
                input=stdin,
                capture_output=True,
                text=True,
                timeout=NFT_TIMEOUT_S,
                check=False,
            )
        except FileNotFoundError:
            raise ToolMissing(f"{action}: {self.nft} not found: install the nftables package") from None
        except subprocess.TimeoutExpired:
            raise FirewallError(f"{action}: nft did not finish within {NFT_TIMEOUT_S:.0f} s") from None
        if proc.returncode != 0:
            detail = " | ".join(line.strip() for line in proc.stderr.strip().splitlines()[:3]) or "no message"
            hint = " (needs root or CAP_NET_ADMIN)" if "Operation not permitted" in proc.stderr else ""
            raise FirewallError(f"{action}: nft exited with {proc.returncode}: {detail}{hint}")
        return proc.stdout
