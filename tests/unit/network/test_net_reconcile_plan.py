from __future__ import annotations

from ipaddress import IPv4Address

from clawpot.network import Allocation, NetworkConfig
from clawpot.network.links import LinkInfo
from clawpot.network.naming import tap_name_for
from clawpot.network.reconcile import plan

CONFIG = NetworkConfig()


def alloc(vm_id: str, last_octet: int) -> Allocation:
    return Allocation(vm_id, IPv4Address(f"192.168.100.{last_octet}"), False, 0.0)


def tap(vm_id: str, index: int) -> LinkInfo:
    return LinkInfo(index, tap_name_for(vm_id, "cp-"), "tun", 2, f"clawpot:{vm_id}", None)


def test_consistent_state_needs_nothing_but_ensuring_known_taps() -> None:
    todo = plan(CONFIG, [alloc("a", 2), alloc("b", 3)], ["a", "b"], [tap("a", 3), tap("b", 4)])
    assert todo.empty
    assert [s.vm_id for s in todo.ensure_taps] == ["a", "b"]


def test_crash_leftovers_in_every_direction() -> None:
    allocations = [alloc("kept", 2), alloc("no-vm-row", 3), alloc("tap-missing", 4)]
    links = [tap("kept", 3), tap("no-vm-row", 4), tap("deleted-long-ago", 5)]
    todo = plan(CONFIG, allocations, ["kept", "tap-missing", "never-attached"], links)
    assert todo.release == ("no-vm-row",)
    assert set(todo.delete_taps) == {
        tap_name_for("no-vm-row", "cp-"),
        tap_name_for("deleted-long-ago", "cp-"),
    }
    assert todo.missing_taps == (tap_name_for("tap-missing", "cp-"),)
    assert [s.vm_id for s in todo.ensure_taps] == ["kept", "tap-missing"]
    assert todo.unallocated == ("never-attached",)


def test_empty_store_releases_everything() -> None:
    todo = plan(CONFIG, [alloc("a", 2)], [], [tap("a", 3)])
    assert todo.release == ("a",) and todo.delete_taps == (tap_name_for("a", "cp-"),) and not todo.ensure_taps
