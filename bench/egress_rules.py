"""Egress rule updates: the time to change 100 VMs' policies, against reloading the ruleset.

    .venv/bin/python bench/egress_rules.py [--vms 100] [--rounds 3] [--out F]

Everything runs in a network namespace this script creates and deletes (real nftables, real SQLite in
a temp dir; no TAPs or VMs: the rules are keyed by names). With ``--vms`` VMs attached, each with a
policy (3 CIDRs and a domain allowed, one CIDR denied), measured in the same run:

- ``update``: ``NetworkManager.set_egress`` once per VM (a new policy each): store + one ``nft -f``
  rewriting that VM's chain and sets. What ``clawpot network`` costs, 100 times.
- ``pin``: ``NetworkManager.pin`` once per VM (what each allowed DNS answer costs); ``pin_again``: the
  same answers again right after (already pinned: no nft transaction).
- ``full_reload_per_vm`` (baseline): the whole ruleset with every VM's policy applied once per VM, what
  a change would cost if it re-rendered everything (``Firewall.apply``, also what attach/detach do).
- ``one_nft_f`` (baseline): that whole ruleset applied once, by one ``nft -f``: all 100 policies.

Prints one JSON document (total seconds per round, per-operation median, the ratios) to stdout.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from clawpot.network import NetworkManager, policydb
from clawpot.network.firewall import find_nft
from clawpot.network.policy import EgressPolicy
from clawpot.network.policydb import VmNetworkPolicy

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from support.netns import NetNamespace


def policy(i: int, round_: int) -> EgressPolicy:
    return EgressPolicy.parse(
        [f"10.{round_}.{i % 250}.0/24", f"172.16.{i % 250}.0/24", "203.0.113.7", f"svc{i}.example.com"],
        [f"10.{round_}.{i % 250}.128/25"],
    )


def answer(i: int, round_: int) -> str:
    """A new address each round: every ``pin`` measured is a real nft transaction."""
    return f"198.{18 + round_}.{i // 250}.{i % 250}"


def measure(vms: int, rounds: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="cp-bench-egress-") as tmp:
        manager = NetworkManager(Path(tmp) / "state.db")
        manager.setup()
        ids = [f"vm-{i:03d}" for i in range(vms)]
        for i, vm_id in enumerate(ids):
            manager.allocator.allocate(vm_id)
            with manager.db.write() as conn:
                policydb.put(conn, vm_id, VmNetworkPolicy(policy(i, 0)))
        manager.sync_rules()
        slots = manager.slots()
        policies = policydb.load_all(manager.db)
        samples: dict[str, list[float]] = {
            "update": [],
            "pin": [],
            "pin_again": [],
            "full_reload_per_vm": [],
            "one_nft_f": [],
        }
        per_op: dict[str, list[float]] = {"update": [], "pin": [], "full_reload_per_vm": []}
        for round_ in range(1, rounds + 1):
            start = time.perf_counter()
            for i, vm_id in enumerate(ids):
                t = time.perf_counter()
                manager.set_egress(vm_id, policy(i, round_))
                per_op["update"].append(time.perf_counter() - t)
            samples["update"].append(time.perf_counter() - start)

            start = time.perf_counter()
            for i, vm_id in enumerate(ids):
                t = time.perf_counter()
                manager.pin(vm_id, f"svc{i}.example.com.", [answer(i, round_)], 300)
                per_op["pin"].append(time.perf_counter() - t)
            samples["pin"].append(time.perf_counter() - start)

            start = time.perf_counter()
            for i, vm_id in enumerate(ids):  # the same answers again: already pinned, no nft call
                manager.pin(vm_id, f"svc{i}.example.com.", [answer(i, round_)], 300)
            samples["pin_again"].append(time.perf_counter() - start)

            policies = policydb.load_all(manager.db)
            start = time.perf_counter()
            for _ in ids:
                t = time.perf_counter()
                manager.firewall.apply(slots, policies)
                per_op["full_reload_per_vm"].append(time.perf_counter() - t)
            samples["full_reload_per_vm"].append(time.perf_counter() - start)

            start = time.perf_counter()
            manager.firewall.apply(slots, policies)
            samples["one_nft_f"].append(time.perf_counter() - start)
        manager.teardown()
    medians = {k: statistics.median(v) for k, v in samples.items()}
    return {
        "vms": vms,
        "rounds": rounds,
        "total_s_median": medians,
        "per_operation_ms_median": {k: statistics.median(v) * 1000 for k, v in per_op.items()},
        "total_s_samples": samples,
        "ratio_update_vs_one_nft_f": medians["update"] / medians["one_nft_f"],
        "ratio_full_reload_per_vm_vs_update": medians["full_reload_per_vm"] / medians["update"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--vms", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    find_nft()
    with NetNamespace.create("clawpot-bench") as ns:
        result = ns.call(measure, args.vms, args.rounds, timeout=1800)
    result["host"] = {"python": platform.python_version(), "machine": platform.machine()}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
