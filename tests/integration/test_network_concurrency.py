"""Many writers at once, and a process killed with SIGKILL mid-way, then reconcile.

All inside a network namespace the test creates: the workers are real processes (forked inside it,
or started with ``ip netns exec``) sharing one SQLite file, as several servers or a restarted one would.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import textwrap
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest
from support.netns import NetNamespace, netns_unavailable_reason, nft_rules, nft_set

from clawpot.network import NetworkConfig, NetworkManager
from clawpot.network.links import iproute
from clawpot.network.naming import tap_name_for
from clawpot.network.tap import clawpot_taps

WORKERS = 20


@pytest.fixture
def ns() -> Iterator[NetNamespace]:
    reason = netns_unavailable_reason()
    if reason:
        pytest.skip(reason)
    namespace = NetNamespace.create()
    try:
        yield namespace
    finally:
        namespace.delete()


def tap_names() -> list[str]:
    with iproute() as ipr:
        return sorted(link.name for link in clawpot_taps(ipr, NetworkConfig()))


def _attach_worker(db: Path, vm_id: str, barrier: Any, results: Any) -> None:
    barrier.wait(timeout=60)
    slot = NetworkManager(db).attach_vm(vm_id)
    results.put((vm_id, str(slot.address), slot.tap_name))


def attach_concurrently(db: Path, count: int) -> list[tuple[str, str, str]]:
    """Runs inside the namespace: ``count`` processes attach one VM each, released together."""
    NetworkManager(db).setup()
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(count), ctx.Queue()
    procs = [ctx.Process(target=_attach_worker, args=(db, f"vm-{i}", barrier, results)) for i in range(count)]
    for proc in procs:
        proc.start()
    collected = [results.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
    assert all(proc.exitcode == 0 for proc in procs), [proc.exitcode for proc in procs]
    return collected


def test_twenty_concurrent_attach_get_twenty_distinct_addresses(ns: NetNamespace, tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    results = ns.call(attach_concurrently, db, WORKERS, timeout=300)
    addresses = [IPv4Address(address) for _, address, _ in results]
    assert len(set(addresses)) == WORKERS
    assert sorted(addresses) == [IPv4Address(f"192.168.100.{i}") for i in range(2, 2 + WORKERS)]
    assert ns.call(tap_names) == sorted(tap for _, _, tap in results)
    # The last ruleset applied saw every committed allocation: no lost update among the writers.
    assert sorted(nft_set(ns, "bridge", "clawpot", "ports")) == sorted(tap for _, _, tap in results)
    assert len(ns.call(lambda: NetworkManager(db).slots())) == WORKERS


CRASHING_SERVER = textwrap.dedent(
    """
    import sys
    from clawpot.network import NetworkManager
    manager = NetworkManager(sys.argv[1])
    manager.setup()
    for i in range(200):
        manager.attach_vm(f"vm-{i}")
        print(i, flush=True)
    """
)


def test_kill_9_mid_way_then_reconcile(ns: NetNamespace, tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    server = ns.popen([sys.executable, "-c", CRASHING_SERVER, str(db)], stdout=-1, stderr=-1)
    try:
        assert server.stdout is not None
        for _ in range(6):  # six VMs fully attached, the seventh somewhere in progress
            assert server.stdout.readline(), server.stderr.read() if server.stderr else ""
    finally:
        os.kill(server.pid, signal.SIGKILL)  # `ip netns exec` execs python: this is the server itself
        server.communicate(timeout=30)
    # A TAP from some earlier crash that no allocation names any more.
    stale = tap_name_for("deleted-while-down", "cp-")
    ns.run(["ip", "tuntap", "add", "dev", stale, "mode", "tap"])

    # The store knows vm-0..vm-3 (say vm-4, vm-5 and the one in flight never got their VM row).
    known = [f"vm-{i}" for i in range(4)]
    todo = ns.call(lambda: NetworkManager(db).reconcile(known))
    assert stale in todo.delete_taps
    assert {"vm-4", "vm-5"} <= set(todo.release)

    slots = ns.call(lambda: NetworkManager(db).slots())
    assert [s.vm_id for s in slots] == known
    assert len({s.address for s in slots}) == len(known)
    assert ns.call(tap_names) == sorted(s.tap_name for s in slots)
    assert sorted(nft_set(ns, "bridge", "clawpot", "ports")) == sorted(s.tap_name for s in slots)
    rules = nft_rules(ns, "inet", "clawpot") + nft_rules(ns, "bridge", "clawpot")
    # The base ruleset (27, test_network_host) and each VM's egress chain (4 rules).
    assert len(rules) == 27 + 4 * len(known) and all(rules.count(rule) == 1 for rule in rules)

    # A second reconcile (another restart) finds nothing to do and leaves the rules as they were.
    again = ns.call(lambda: NetworkManager(db).reconcile(known))
    assert again.empty and not again.release and not again.unallocated
    assert nft_rules(ns, "inet", "clawpot") + nft_rules(ns, "bridge", "clawpot") == rules
    # New VMs get addresses no surviving VM has.
    fresh = ns.call(lambda: NetworkManager(db).attach_vm("vm-new"))
    assert fresh.address not in {s.address for s in slots}
