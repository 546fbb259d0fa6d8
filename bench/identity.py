"""Guest identity: on the kernel command line at boot, or set by the agent's ``configure`` after it.

    .venv/bin/python bench/identity.py [--runs 5] [--configures 20] [--kernel K --rootfs R] [--out F]

The root filesystem must carry an agent that has ``configure``: build one from this working tree into
a private data directory (the build cache is shared and keyed by content, the installed assets are not
touched): ``CLAWPOT_DATA_DIR=/tmp/ident-data clawpot assets install``, then pass
``--rootfs /tmp/ident-data/assets/rootfs.ext4``.

Everything runs in a network namespace this script creates and deletes (a bridge with the gateway
address and one TAP per VM), so no packet leaves it. QEMU under the accelerator the host gives (TCG
here), 1 vCPU, 256 MiB, a NIC on the TAP. Measured in the same run, alternating which goes first:

- ``cmdline``: create → agent ready with the identity on the kernel command line (``ip=``,
  ``clawpot.hostname``, ``clawpot.dns``): ``Vm.start()``, whose end is the agent's answer. The identity is
  in effect by then (the kernel sets ``ip=`` before init; the init sets hostname and DNS before the
  agent starts), so this is create → ready + identity.
- ``configure``: create → agent ready with no identity on the command line, then ``configure`` with the
  same identity (and a MAC): ``Vm.start()`` + ``AgentClient.configure``.
- ``configure_call``: the ``configure`` call alone on a running VM, alternating between two full
  identities so that each call changes MAC, address, route, hostname and DNS (what a pool hand-out or
  a restored snapshot needs), plus the same call repeated (nothing to change).

Prints one JSON document (medians, min/max, all samples, ratios) to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from clawpot import paths
from clawpot.agent_client import GuestIdentity
from clawpot.assets.bootargs import GuestIp, guest_cmdline
from clawpot.vm.boot import OVERLAY_DEVICE
from clawpot.vm.config import VmConfig
from clawpot.vm.handle import Vm
from clawpot.vmm.qemu.backend import QemuBackend
from clawpot.vmm.qemu.cmdline import Accel
from clawpot.vmm.spec import NetworkInterface

# The namespace harness lives with the tests (tests/support/netns.py): the product ships none.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from support.netns import NetNamespace

READY_TIMEOUT = 180.0
BRIDGE = "cpb-br0"
GATEWAY = "192.168.90.1"
IDENTITIES = (
    GuestIdentity(
        hostname="bench-a",
        address="192.168.90.10/24",
        gateway=GATEWAY,
        dns=[GATEWAY],
        mac="06:00:c0:a8:5a:0a",
    ),
    GuestIdentity(
        hostname="bench-b",
        address="192.168.90.11/24",
        gateway=GATEWAY,
        dns=[GATEWAY],
        mac="06:00:c0:a8:5a:0b",
    ),
)


def _cmdline_args(identity: GuestIdentity) -> str:
    assert identity.address and identity.gateway and identity.dns
    return guest_cmdline(
        overlay_device=OVERLAY_DEVICE,
        hostname=identity.hostname,
        ip=GuestIp(identity.address.split("/")[0], identity.gateway),
        dns=",".join(identity.dns),
    )


def _vm(kernel: Path, rootfs: Path, work: Path, tap: str, boot_args: str, mac: str) -> Vm:
    config = VmConfig(
        kernel,
        rootfs,
        boot_args=boot_args,
        network_interfaces=(NetworkInterface(tap, mac),),
        ready_timeout=READY_TIMEOUT,
    )
    return Vm(config, QemuBackend(accel=Accel.TCG), root=work)


async def _one_boot(mode: str, kernel: Path, rootfs: Path, work: Path, tap: str) -> dict[str, float]:
    identity = IDENTITIES[0]
    assert identity.mac is not None
    if mode == "cmdline":
        vm = _vm(kernel, rootfs, work, tap, _cmdline_args(identity), identity.mac)
    else:
        vm = _vm(kernel, rootfs, work, tap, guest_cmdline(overlay_device=OVERLAY_DEVICE), "06:00:00:00:00:01")
    started = time.monotonic()
    try:
        await vm.start()
        ready = time.monotonic() - started
        assert vm.agent is not None
        sample = {"ready_s": ready}
        if mode == "configure":
            t0 = time.monotonic()
            result = await vm.agent.configure(identity)
            sample["configure_s"] = time.monotonic() - t0
            sample["agent_s"] = result.duration
            assert result.satisfies(identity), result
        sample["total_s"] = time.monotonic() - started
        # The same check for both modes, outside the clock: the identity really is in effect.
        check = await vm.agent.run(["cat", "/proc/sys/kernel/hostname", "/sys/class/net/eth0/address"])
        assert check.stdout.decode().split() == [identity.hostname, identity.mac], check
        return sample
    finally:
        await vm.stop(grace=0)


async def _configure_calls(kernel: Path, rootfs: Path, work: Path, tap: str, count: int) -> dict[str, Any]:
    vm = _vm(kernel, rootfs, work, tap, _cmdline_args(IDENTITIES[0]), IDENTITIES[0].mac or "")
    changing: list[float] = []
    agent_side: list[float] = []
    repeated: list[float] = []
    try:
        await vm.start()
        assert vm.agent is not None
        await vm.agent.ping()
        for i in range(count):
            identity = IDENTITIES[(i + 1) % 2]
            t0 = time.monotonic()
            result = await vm.agent.configure(identity)
            changing.append(time.monotonic() - t0)
            agent_side.append(result.duration)
            # (the first call also rewrites the resolv.conf the init wrote: it differs in its comment line)
            assert result.changed >= {"mac", "address", "gateway", "hostname"}, result.changed
            t0 = time.monotonic()
            same = await vm.agent.configure(identity)
            repeated.append(time.monotonic() - t0)
            assert same.changed == frozenset()
        pings = []
        for _ in range(count):
            pings.append(await vm.agent.ping())
    finally:
        await vm.stop(grace=0)
    return {
        "changing_everything": summary(changing),
        "changing_everything_agent_side": summary(agent_side),
        "nothing_to_change": summary(repeated),
        "baseline_agent_ping": summary(pings),
    }


def summary(samples: list[float]) -> dict[str, Any]:
    return {
        "n": len(samples),
        "median_s": round(statistics.median(samples), 4),
        "min_s": round(min(samples), 4),
        "max_s": round(max(samples), 4),
        "samples_s": [round(s, 4) for s in samples],
    }


def run_in_namespace(kernel: Path, rootfs: Path, runs: int, configures: int) -> dict[str, Any]:
    """In the namespace: N boots of each mode, alternating, then the configure calls on one VM."""

    async def main() -> dict[str, Any]:
        samples: dict[str, list[dict[str, float]]] = {"cmdline": [], "configure": []}
        with tempfile.TemporaryDirectory(prefix="clawpot-bench-ident-") as tmp:
            work = Path(tmp)
            for run in range(runs):
                order = ("cmdline", "configure") if run % 2 == 0 else ("configure", "cmdline")
                for mode in order:
                    samples[mode].append(await _one_boot(mode, kernel, rootfs, work, "cpb-tap0"))
                print(
                    f"run {run + 1}/{runs}: cmdline {samples['cmdline'][-1]['total_s']:.2f} s, "
                    f"configure {samples['configure'][-1]['total_s']:.2f} s "
                    f"(call {samples['configure'][-1]['configure_s'] * 1000:.1f} ms)",
                    file=sys.stderr,
                )
            calls = await _configure_calls(kernel, rootfs, work, "cpb-tap0", configures)
        cmd_total = [s["total_s"] for s in samples["cmdline"]]
        cfg_total = [s["total_s"] for s in samples["configure"]]
        return {
            "cmdline": {"create_to_ready_and_identity": summary(cmd_total)},
            "configure": {
                "create_to_ready_and_identity": summary(cfg_total),
                "create_to_ready": summary([s["ready_s"] for s in samples["configure"]]),
                "configure_call": summary([s["configure_s"] for s in samples["configure"]]),
                "configure_agent_side": summary([s["agent_s"] for s in samples["configure"]]),
            },
            # Each run boots both back to back: their difference cancels much of the load's drift.
            "paired_difference_configure_minus_cmdline": summary(
                [c - m for c, m in zip(cfg_total, cmd_total, strict=True)]
            ),
            "ratio_median_configure_over_cmdline": round(
                statistics.median(cfg_total) / statistics.median(cmd_total), 3
            ),
            "configure_on_a_running_vm": calls,
        }

    return asyncio.run(main())


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--configures", type=int, default=20)
    parser.add_argument("--kernel", type=Path, default=paths.assets_dir() / "vmlinux")
    parser.add_argument("--rootfs", type=Path, default=paths.assets_dir() / "rootfs.ext4")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    for asset in (args.kernel, args.rootfs):
        if not asset.is_file():
            print(f"bench/identity.py: {asset} not found", file=sys.stderr)
            return 2
    load_before = os.getloadavg()[0]
    with NetNamespace.create("clawpot-bench-ident") as ns:
        ns.run(["ip", "link", "add", BRIDGE, "type", "bridge"])
        ns.run(["ip", "address", "add", f"{GATEWAY}/24", "dev", BRIDGE])
        ns.run(["ip", "link", "set", BRIDGE, "up"])
        ns.run(["ip", "tuntap", "add", "dev", "cpb-tap0", "mode", "tap"])
        ns.run(["ip", "link", "set", "cpb-tap0", "master", BRIDGE])
        ns.run(["ip", "link", "set", "cpb-tap0", "up"])
        measured = ns.call(
            run_in_namespace, args.kernel, args.rootfs, args.runs, args.configures, timeout=7200
        )
    result = {
        "benchmark": "guest identity: kernel command line at boot vs agent configure after ready",
        "runs": args.runs,
        "configures": args.configures,
        "accel": "tcg",
        "host": {
            "kernel": platform.release(),
            "cpus": os.cpu_count(),
            "load_avg_1m_before": load_before,
            "load_avg_1m_after": os.getloadavg()[0],
        },
        **measured,
    }
    text = json.dumps(result, indent=2, ensure_ascii=False)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
