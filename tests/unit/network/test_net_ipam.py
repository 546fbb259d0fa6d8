from __future__ import annotations

import sqlite3
import threading
from contextlib import closing
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from clawpot.network import (
    AddressInUse,
    AddressNotAllowed,
    AddressPoolExhausted,
    AllocationError,
    IpAllocator,
    NetworkConfig,
)

SMALL = NetworkConfig.build(subnet="10.9.0.0/29")  # .1 gateway, .2-.6 guests, .7 broadcast


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state.db"


def rows(db: Path) -> list[tuple[str, str]]:
    with closing(sqlite3.connect(db)) as conn:
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'ip_allocations'").fetchone():
            return []
        return conn.execute("SELECT vm_id, address FROM ip_allocations ORDER BY vm_id").fetchall()


def test_pool_skips_network_gateway_and_broadcast() -> None:
    config = NetworkConfig.build(subnet="10.9.0.0/29", gateway="10.9.0.4")
    pool = [str(a) for a in IpAllocator(":memory:", config).candidates()]
    assert pool == ["10.9.0.1", "10.9.0.2", "10.9.0.3", "10.9.0.5", "10.9.0.6"]
    assert len(list(IpAllocator(":memory:").candidates())) == NetworkConfig().pool_size == 253


def test_allocates_lowest_free_and_reuses_released(db: Path) -> None:
    ipam = IpAllocator(db, SMALL)
    assert [str(ipam.allocate(f"vm-{i}").address) for i in range(3)] == ["10.9.0.2", "10.9.0.3", "10.9.0.4"]
    released = ipam.release("vm-1")
    assert released is not None and str(released.address) == "10.9.0.3"
    assert ipam.release("vm-1") is None
    assert str(ipam.allocate("vm-new").address) == "10.9.0.3"


def test_exhausting_a_slash_29_raises_and_leaks_nothing(db: Path) -> None:
    ipam = IpAllocator(db, SMALL)
    for i in range(5):
        ipam.allocate(f"vm-{i}")
    assert ipam.free_count() == 0
    with pytest.raises(AddressPoolExhausted, match=r"10\.9\.0\.0/29: all 5"):
        ipam.allocate("vm-5")
    assert len(rows(db)) == 5 and ipam.lookup("vm-5") is None
    ipam.release("vm-2")
    assert str(ipam.allocate("vm-5").address) == "10.9.0.4"


def test_allocations_persist_across_allocators(db: Path) -> None:
    IpAllocator(db, SMALL).allocate("vm-a", allow_peers=True)
    again = IpAllocator(db, SMALL).lookup("vm-a")
    assert again is not None and str(again.address) == "10.9.0.2" and again.allow_peers


def test_requested_address_is_honoured_when_free(db: Path) -> None:
    ipam = IpAllocator(db, SMALL)
    assert str(ipam.allocate("vm-a", "10.9.0.5").address) == "10.9.0.5"
    assert str(ipam.allocate("vm-b").address) == "10.9.0.2"
    assert ipam.owner_of("10.9.0.5") == "vm-a"


def test_requested_address_taken_names_its_owner(db: Path) -> None:
    ipam = IpAllocator(db, SMALL)
    ipam.allocate("vm-a", IPv4Address("10.9.0.5"))
    with pytest.raises(AddressInUse, match="already assigned to VM vm-a") as info:
        ipam.allocate("vm-b", "10.9.0.5")
    assert info.value.owner == "vm-a"
    assert ipam.lookup("vm-b") is None


@pytest.mark.parametrize(
    ("requested", "fragment"),
    [
        ("10.9.1.2", "outside the guest subnet"),
        ("10.9.0.1", "is the gateway"),
        ("10.9.0.0", "network or broadcast"),
        ("10.9.0.7", "network or broadcast"),
        ("10.9.0.300", "not an IPv4 address"),
        ("fe80::1", "not an IPv4 address"),
    ],
)
def test_requested_address_outside_the_pool_is_refused(db: Path, requested: str, fragment: str) -> None:
    ipam = IpAllocator(db, SMALL)
    with pytest.raises(AddressNotAllowed, match=fragment):
        ipam.allocate("vm-a", requested)
    assert rows(db) == []


def test_allocate_is_idempotent_per_vm(db: Path) -> None:
    ipam = IpAllocator(db, SMALL)
    first = ipam.allocate("vm-a")
    again = ipam.allocate("vm-a", allow_peers=True)
    assert again.address == first.address and again.allow_peers
    assert ipam.allocate("vm-a", first.address).address == first.address
    with pytest.raises(AddressInUse, match="already has address"):
        ipam.allocate("vm-a", "10.9.0.6")
    assert len(rows(db)) == 1


@pytest.mark.parametrize("vm_id", ["", "a\nb", "x" * 257])
def test_invalid_vm_ids_are_refused(db: Path, vm_id: str) -> None:
    with pytest.raises(AllocationError, match="invalid VM id"):
        IpAllocator(db, SMALL).allocate(vm_id)


def test_twenty_concurrent_threads_get_twenty_distinct_addresses(db: Path) -> None:
    ipam = IpAllocator(db)
    barrier = threading.Barrier(20)
    results: dict[str, str] = {}
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        barrier.wait()
        try:
            results[f"vm-{i}"] = str(ipam.allocate(f"vm-{i}").address)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert len(set(results.values())) == 20
    assert sorted(results.values(), key=IPv4Address) == [f"192.168.100.{i}" for i in range(2, 22)]
    assert len(rows(db)) == 20


def test_shared_connection_joins_the_callers_transaction(db: Path) -> None:
    conn = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    conn.execute("CREATE TABLE vms (id TEXT PRIMARY KEY)")
    ipam = IpAllocator(conn, SMALL)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO vms VALUES ('vm-a')")
    ipam.allocate("vm-a")
    conn.execute("ROLLBACK")  # the server's create failed: the address goes with the VM row
    assert ipam.lookup("vm-a") is None
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO vms VALUES ('vm-a')")
    ipam.allocate("vm-a")
    conn.execute("COMMIT")
    assert rows(db) == [("vm-a", "10.9.0.2")]
    conn.close()


def test_failed_allocation_inside_a_caller_transaction_keeps_the_callers_work(db: Path) -> None:
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("CREATE TABLE vms (id TEXT PRIMARY KEY)")
    ipam = IpAllocator(conn, SMALL)
    ipam.allocate("vm-a", "10.9.0.2")
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO vms VALUES ('vm-b')")
    with pytest.raises(AddressInUse):
        ipam.allocate("vm-b", "10.9.0.2")
    conn.execute("COMMIT")
    assert conn.execute("SELECT id FROM vms").fetchall() == [("vm-b",)]
    conn.close()


def test_works_on_a_store_style_connection_with_row_factory_and_wal(db: Path) -> None:
    conn = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    ipam = IpAllocator(conn, SMALL)
    ipam.allocate("vm-a", "10.9.0.3")
    assert str(ipam.allocate("vm-b").address) == "10.9.0.2"
    with pytest.raises(AddressInUse, match="vm-a"):
        ipam.allocate("vm-c", "10.9.0.3")
    assert [a.vm_id for a in ipam.allocations()] == ["vm-b", "vm-a"]
    assert IpAllocator(db, SMALL).owner_of("10.9.0.3") == "vm-a"  # a second connection by path agrees
    conn.close()
