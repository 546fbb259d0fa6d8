"""``IpAllocator``: guest IPv4 addresses from the subnet, persisted in SQLite, safe under concurrency.

The pool is the subnet minus its network, gateway and broadcast addresses. Allocation takes the
lowest free address inside one ``BEGIN IMMEDIATE`` transaction, so concurrent allocators (threads or
processes on the same file) are serialised by SQLite's write lock and never hand out one address
twice; the ``UNIQUE`` constraint on ``address`` backs that up. Rows live in ``ip_allocations``, keyed
by VM id, in the same database as the server's store so both can be changed in one transaction.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import AddressValueError, IPv4Address
from pathlib import Path

from clawpot.network.config import NetworkConfig
from clawpot.network.db import Database
from clawpot.network.errors import (
    AddressInUse,
    AddressNotAllowed,
    AddressPoolExhausted,
    AllocationError,
)

MAX_VM_ID_LEN = 256


@dataclass(frozen=True)
class Allocation:
    vm_id: str
    address: IPv4Address
    allow_peers: bool
    allocated_at: float


def _row_to_allocation(row: tuple[str, str, int, float]) -> Allocation:
    return Allocation(
        vm_id=row[0], address=IPv4Address(row[1]), allow_peers=bool(row[2]), allocated_at=row[3]
    )


def _check_vm_id(vm_id: str) -> None:
    if not vm_id or len(vm_id) > MAX_VM_ID_LEN or not vm_id.isprintable():
        raise AllocationError(f"invalid VM id {vm_id!r}: 1-{MAX_VM_ID_LEN} printable characters")


class IpAllocator:
    """The address pool of one ``NetworkConfig`` over a database (path, connection or ``Database``)."""

    def __init__(
        self, db: Path | str | sqlite3.Connection | Database, config: NetworkConfig | None = None
    ) -> None:
        self.db = db if isinstance(db, Database) else Database(db)
        self.config = config or NetworkConfig()
        net = self.config.subnet
        self._first = int(net.network_address) + 1
        self._last = int(net.broadcast_address) - 1
        self._gateway = int(self.config.gateway)

    # -- pool math (no I/O) -------------------------------------------------------------------------

    def candidates(self) -> Iterator[IPv4Address]:
        """Every address the pool may hand out, lowest first."""
        for value in range(self._first, self._last + 1):
            if value != self._gateway:
                yield IPv4Address(value)

    def check_requested(self, requested: str | IPv4Address) -> IPv4Address:
        """The requested address parsed and checked against the pool (not against current owners)."""
        try:
            address = IPv4Address(requested)
        except (AddressValueError, ValueError):
            raise AddressNotAllowed(f"requested address {requested!r} is not an IPv4 address") from None
        net = self.config.subnet
        if address not in net:
            raise AddressNotAllowed(f"requested address {address} is outside the guest subnet {net}")
        value = int(address)
        if value == self._gateway:
            raise AddressNotAllowed(f"requested address {address} is the gateway of {net}")
        if not self._first <= value <= self._last:
            raise AddressNotAllowed(
                f"requested address {address} is the network or broadcast address of {net}"
            )
        return address

    # -- persistent operations ----------------------------------------------------------------------

    def allocate(
        self, vm_id: str, requested: str | IPv4Address | None = None, *, allow_peers: bool = False
    ) -> Allocation:
        """Give ``vm_id`` an address: ``requested`` if free, else the lowest free one.

        Idempotent for a VM that already has an address (it keeps it; ``allow_peers`` is updated);
        asking that VM for a different address is an error.
        """
        _check_vm_id(vm_id)
        wanted = None if requested is None else self.check_requested(requested)
        with self.db.write() as conn:
            row = conn.execute(
                "SELECT vm_id, address, allow_peers, allocated_at FROM ip_allocations WHERE vm_id = ?",
                (vm_id,),
            ).fetchone()
            if row is not None:
                current = _row_to_allocation(row)
                if wanted is not None and wanted != current.address:
                    raise AddressInUse(
                        f"VM {vm_id} already has address {current.address}, not {wanted}", owner=vm_id
                    )
                if current.allow_peers != allow_peers:
                    conn.execute(
                        "UPDATE ip_allocations SET allow_peers = ? WHERE vm_id = ?", (int(allow_peers), vm_id)
                    )
                    current = Allocation(vm_id, current.address, allow_peers, current.allocated_at)
                return current
            used = {int(IPv4Address(a)) for (a,) in conn.execute("SELECT address FROM ip_allocations")}
            if wanted is not None:
                if int(wanted) in used:
                    (owner,) = conn.execute(
                        "SELECT vm_id FROM ip_allocations WHERE address = ?", (str(wanted),)
                    ).fetchone()
                    raise AddressInUse(f"address {wanted} is already assigned to VM {owner}", owner=owner)
                address = wanted
            else:
                address = self._lowest_free(used)
            allocation = Allocation(vm_id, address, allow_peers, time.time())
            conn.execute(
                "INSERT INTO ip_allocations (vm_id, address, allow_peers, allocated_at) VALUES (?, ?, ?, ?)",
                (vm_id, str(address), int(allow_peers), allocation.allocated_at),
            )
            return allocation

    def _lowest_free(self, used: set[int]) -> IPv4Address:
        for candidate in self.candidates():
            if int(candidate) not in used:
                return candidate
        raise AddressPoolExhausted(
            f"no free guest address in {self.config.subnet}: all {self.config.pool_size} are assigned"
        )

    def release(self, vm_id: str) -> Allocation | None:
        """Free ``vm_id``'s address; returns what was freed, None if it had none."""
        with self.db.write() as conn:
            row = conn.execute(
                "SELECT vm_id, address, allow_peers, allocated_at FROM ip_allocations WHERE vm_id = ?",
                (vm_id,),
            ).fetchone()
            if row is None:
                return None
            conn.execute("DELETE FROM ip_allocations WHERE vm_id = ?", (vm_id,))
            return _row_to_allocation(row)

    def set_allow_peers(self, vm_id: str, allow: bool) -> Allocation | None:
        with self.db.write() as conn:
            conn.execute("UPDATE ip_allocations SET allow_peers = ? WHERE vm_id = ?", (int(allow), vm_id))
        return self.lookup(vm_id)

    def lookup(self, vm_id: str) -> Allocation | None:
        with self.db.read() as conn:
            row = conn.execute(
                "SELECT vm_id, address, allow_peers, allocated_at FROM ip_allocations WHERE vm_id = ?",
                (vm_id,),
            ).fetchone()
        return None if row is None else _row_to_allocation(row)

    def owner_of(self, address: str | IPv4Address) -> str | None:
        with self.db.read() as conn:
            row = conn.execute(
                "SELECT vm_id FROM ip_allocations WHERE address = ?", (str(IPv4Address(address)),)
            ).fetchone()
        return None if row is None else str(row[0])

    def allocations(self, conn: sqlite3.Connection | None = None) -> list[Allocation]:
        """Every allocation, by address; read through ``conn`` when inside one of its transactions."""
        query = "SELECT vm_id, address, allow_peers, allocated_at FROM ip_allocations"
        if conn is not None:
            rows = conn.execute(query).fetchall()
        else:
            with self.db.read() as own:
                rows = own.execute(query).fetchall()
        return sorted((_row_to_allocation(r) for r in rows), key=lambda a: int(a.address))

    def free_count(self) -> int:
        taken = sum(1 for a in self.allocations() if self._in_pool(a.address))
        return self.config.pool_size - taken

    def _in_pool(self, address: IPv4Address) -> bool:
        value = int(address)
        return self._first <= value <= self._last and value != self._gateway
