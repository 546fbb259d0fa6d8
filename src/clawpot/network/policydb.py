"""Each VM's egress policy and published ports in SQLite (tables in ``db.SCHEMA``), next to its address.

Stored with the allocation, so the rules re-rendered after a server restart are the VM's own again.
Collisions of published ports are refused by the ``port_forwards`` primary key: two VMs can never
hold the same host address, protocol and port, whatever the timing.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from clawpot.network.db import Database
from clawpot.network.errors import PortInUse
from clawpot.network.policy import EgressPolicy, PortForward


@dataclass(frozen=True)
class VmNetworkPolicy:
    """What one VM may reach (``egress``) and what reaches it (``ports``)."""

    egress: EgressPolicy = field(default_factory=EgressPolicy)
    ports: tuple[PortForward, ...] = ()


def put(conn: sqlite3.Connection, vm_id: str, policy: VmNetworkPolicy) -> None:
    """Replace the VM's rows (inside the caller's write transaction); PortInUse if a port is taken."""
    conn.execute("DELETE FROM port_forwards WHERE vm_id = ?", (vm_id,))
    for port in policy.ports:
        try:
            conn.execute(
                "INSERT INTO port_forwards (host_address, protocol, host_port, vm_id, guest_port)"
                " VALUES (?, ?, ?, ?, ?)",
                (str(port.host_address), port.protocol, port.host_port, vm_id, port.guest_port),
            )
        except sqlite3.IntegrityError:
            owner = conn.execute(
                "SELECT vm_id FROM port_forwards WHERE host_address = ? AND protocol = ? AND host_port = ?",
                (str(port.host_address), port.protocol, port.host_port),
            ).fetchone()
            raise PortInUse(
                f"host port {port.host_address}:{port.host_port}/{port.protocol} is already published"
                f" by VM {owner[0] if owner else '?'}"
            ) from None
    set_egress(conn, vm_id, policy.egress)


def set_egress(conn: sqlite3.Connection, vm_id: str, egress: EgressPolicy) -> None:
    if egress == EgressPolicy():
        conn.execute("DELETE FROM egress_policies WHERE vm_id = ?", (vm_id,))
        return
    conn.execute(
        "INSERT INTO egress_policies (vm_id, policy) VALUES (?, ?)"
        " ON CONFLICT(vm_id) DO UPDATE SET policy = excluded.policy",
        (vm_id, egress.to_json()),
    )


def remove(conn: sqlite3.Connection, vm_id: str) -> None:
    conn.execute("DELETE FROM egress_policies WHERE vm_id = ?", (vm_id,))
    conn.execute("DELETE FROM port_forwards WHERE vm_id = ?", (vm_id,))


def load_all(db: Database, conn: sqlite3.Connection | None = None) -> dict[str, VmNetworkPolicy]:
    """Every VM that has a non-default policy or a published port."""
    if conn is None:
        with db.read() as own:
            return load_all(db, own)
    egress = {
        str(vm_id): EgressPolicy.from_json(str(text))
        for vm_id, text in conn.execute("SELECT vm_id, policy FROM egress_policies")
    }
    ports: dict[str, list[PortForward]] = {}
    for address, protocol, host_port, vm_id, guest_port in conn.execute(
        "SELECT host_address, protocol, host_port, vm_id, guest_port FROM port_forwards"
    ):
        ports.setdefault(str(vm_id), []).append(
            PortForward(IPv4Address(address), str(protocol), int(host_port), int(guest_port))
        )
    return {
        vm_id: VmNetworkPolicy(egress.get(vm_id, EgressPolicy()), tuple(sorted(ports.get(vm_id, ()))))
        for vm_id in set(egress) | set(ports)
    }
