"""One VM's egress chain and sets, and the published-port map, in nft syntax (pure; ``firewall`` applies).

Each VM (keyed by its TAP name, so the rules follow the TAP of a restored or forked VM) has, in
``inet <table>``:

- ``allow_<tap>``, ``deny_<tap>``: its --allow-out / --deny-out networks (interval sets);
- ``pin_<tap>``: addresses the gateway's DNS forwarder answered for its allowed domains, each with a
  timeout (the record's TTL, clamped): nft forgets them by itself;
- ``egress_<tap>``: the chain its forwarded packets jump to (through the ``egress`` map keyed by the
  guest's address, which the bridge table's anti-spoofing rules tie to the TAP).

The whole ruleset contains them (``render_objects``); a policy change rewrites only that VM's chain and
sets (``render_update``) in one ``nft -f`` transaction, and a DNS answer adds its addresses with
``render_pin``. Neither reloads the ruleset: other VMs' pins and the conntrack state stay untouched.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from clawpot.network.config import NetworkConfig
from clawpot.network.policy import EgressPolicy, PortForward
from clawpot.network.slot import NetworkSlot


def key(slot: NetworkSlot) -> str:
    """The suffix of the VM's chain and set names: its TAP name with anything but [A-Za-z0-9] as '_'."""
    return re.sub(r"[^A-Za-z0-9]", "_", slot.tap_name)


def _elements(values: Iterable[str]) -> str:
    return ", ".join(values)


def _pin_elements(pins: Mapping[str, int]) -> str:
    return _elements(f"{address} timeout {max(1, seconds)}s" for address, seconds in sorted(pins.items()))


def chain_rules(slot: NetworkSlot, policy: EgressPolicy) -> list[str]:
    """The rules of ``egress_<tap>``: deny first, then allows and pins, then the default verdict."""
    k = key(slot)
    if policy.no_internet:
        return ["drop"]
    return [
        f"ip daddr @deny_{k} drop",
        f"ip daddr @allow_{k} accept",
        f"ip daddr @pin_{k} accept",
        "drop" if policy.default_deny else "accept",
    ]


def render_objects(slot: NetworkSlot, policy: EgressPolicy, pins: Mapping[str, int]) -> str:
    """The VM's sets and chain as they appear inside ``table inet <table> { ... }``."""
    k = key(slot)
    out = ""
    for name, networks in (("allow", policy.allow.networks), ("deny", policy.deny.networks)):
        elements = f"\t\telements = {{ {_elements(map(str, networks))} }}\n" if networks else ""
        out += (
            f"\tset {name}_{k} {{\n\t\ttype ipv4_addr\n\t\tflags interval\n\t\tauto-merge\n{elements}\t}}\n"
        )
    pinned = f"\t\telements = {{ {_pin_elements(pins)} }}\n" if pins else ""
    out += f"\tset pin_{k} {{\n\t\ttype ipv4_addr\n\t\tflags timeout\n{pinned}\t}}\n"
    out += (
        f"\tchain egress_{k} {{\n" + "".join(f"\t\t{rule}\n" for rule in chain_rules(slot, policy)) + "\t}\n"
    )
    return out


def render_update(
    config: NetworkConfig, slot: NetworkSlot, policy: EgressPolicy, pins: Mapping[str, int]
) -> str:
    """Commands replacing the VM's chain and sets in place (they must exist: the VM is attached)."""
    t, k = config.table, key(slot)
    lines = [f"flush chain inet {t} egress_{k}"]
    for name, networks in (("allow", policy.allow.networks), ("deny", policy.deny.networks)):
        lines.append(f"flush set inet {t} {name}_{k}")
        if networks:
            lines.append(f"add element inet {t} {name}_{k} {{ {_elements(map(str, networks))} }}")
    lines.append(f"flush set inet {t} pin_{k}")
    if pins:
        lines.append(f"add element inet {t} pin_{k} {{ {_pin_elements(pins)} }}")
    lines += [f"add rule inet {t} egress_{k} {rule}" for rule in chain_rules(slot, policy)]
    return "\n".join(lines) + "\n"


def render_pin(config: NetworkConfig, slot: NetworkSlot, addresses: Iterable[str], seconds: int) -> str:
    """Commands (re)setting pinned addresses with a fresh timeout: add, delete, add (``add`` alone
    keeps an existing element's old timeout; ``delete`` alone fails on a missing one)."""
    items = _pin_elements(dict.fromkeys(addresses, seconds))
    target = f"inet {config.table} pin_{key(slot)}"
    return f"add element {target} {{ {items} }}\ndelete element {target} {{ {items} }}\n" + (
        f"add element {target} {{ {items} }}\n"
    )


def egress_map_elements(slots: Iterable[NetworkSlot]) -> list[str]:
    return [f"{slot.address} : jump egress_{key(slot)}" for slot in slots]


def publish_map_elements(forwards: Iterable[tuple[NetworkSlot, PortForward]]) -> list[str]:
    """``hostaddr . proto . hostport : guestaddr . guestport`` for the ``publish`` map."""
    return [
        f"{p.host_address} . {p.protocol} . {p.host_port} : {slot.address} . {p.guest_port}"
        for slot, p in forwards
    ]
