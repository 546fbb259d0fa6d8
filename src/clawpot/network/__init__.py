"""Guest networking: a bridge, a TAP per VM, persistent IPv4 allocation, NAT and isolation.

The server uses ``NetworkManager`` only; the modules below it each do one job:

- ``config``     ``NetworkConfig``: bridge name, subnet, gateway, TAP prefix, table name (validated).
- ``naming``     TAP names (``cp-<hash of VM id>``) and MACs (``06:00:<IPv4 octets>``) derived.
- ``db``         SQLite access: a path or the server's connection, write transactions, schema.
- ``ipam``       ``IpAllocator``: the address pool, persisted, concurrency-safe.
- ``slot``       ``NetworkSlot``: one VM's TAP, MAC, address, gateway, DNS and kernel ``ip=``.
- ``links``      netlink plumbing (pyroute2): find, list, delete links by exact name.
- ``bridge``     the bridge with its gateway address; IPv4 forwarding.
- ``tap``        per-VM TAP devices attached to the bridge.
- ``firewall``   Clawpot's nftables tables: NAT and isolation, applied atomically.
- ``policy``     ``EgressPolicy`` (--allow-out/--deny-out/--no-internet), ``PortForward`` (--publish): pure.
- ``policydb``   each VM's policy and published ports in SQLite (a port is never published twice).
- ``vmrules``    one VM's egress chain and sets, the publish map: nft text, rewritten per VM.
- ``dnsforward`` ``DnsForwarder``: the gateway's DNS for guests, per-VM policy, pins allowed answers.
- ``reconcile``  what to release, delete or recreate after a crash (pure).
- ``manager``    ``NetworkManager``: setup, attach_vm, detach_vm, reconcile, teardown.

Errors: every one derives from ``NetworkError`` (see ``errors`` for the tree). docs/networking.md
describes the rules guests live under.
"""

from clawpot.network.config import NetworkConfig
from clawpot.network.errors import (
    AddressInUse,
    AddressNotAllowed,
    AddressPoolExhausted,
    AllocationError,
    FirewallError,
    LinkError,
    NetworkConfigError,
    NetworkError,
    PortInUse,
    ToolMissing,
)
from clawpot.network.ipam import Allocation, IpAllocator
from clawpot.network.manager import NetworkManager
from clawpot.network.reconcile import ReconcilePlan
from clawpot.network.slot import NetworkSlot

__all__ = [
    "AddressInUse",
    "AddressNotAllowed",
    "AddressPoolExhausted",
    "Allocation",
    "AllocationError",
    "FirewallError",
    "IpAllocator",
    "LinkError",
    "NetworkConfig",
    "NetworkConfigError",
    "NetworkError",
    "NetworkManager",
    "NetworkSlot",
    "PortInUse",
    "ReconcilePlan",
    "ToolMissing",
]
