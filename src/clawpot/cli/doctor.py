"""`clawpot doctor`: can this host run Clawpot VMs, and on which backend? Checks, never changes."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from clawpot import limits, paths
from clawpot.assets.install import status as assets_status
from clawpot.assets.manifest import State
from clawpot.cli import hostchecks
from clawpot.cli.hostchecks import Check
from clawpot.vmm import probe
from clawpot.vmm.account import VMM_USER, vmm_account
from clawpot.vmm.base import VmmConfigError, VmmError
from clawpot.vmm.qemu.cmdline import Accel
from clawpot.vmm.qemu.confine import kvm_groups

# (tool, Debian package, what needs it)
TOOLS = (
    ("qemu-system-x86_64", "qemu-system-x86", "QEMU backend"),
    ("nft", "nftables", "VM networking (NAT, isolation)"),
    ("mkfs.ext4", "e2fsprogs", "per-VM writable layers"),
    ("debugfs", "e2fsprogs", "clawpot assets inject"),
    ("mmdebstrap", "mmdebstrap", "building the root filesystem"),
    ("setpriv", "util-linux", "QEMU as the VMM account"),
)


def _network_checks(data: Path, bridge: str, subnet: str) -> list[Check]:
    checks = [hostchecks.nftables(), hostchecks.bridge(bridge)]
    config = hostchecks.network_config(bridge, subnet)
    if config is None:
        return [*checks, Check(f"subnet {subnet}", False, "not a usable VM subnet (--subnet)")]
    return [*checks, hostchecks.dns_forwarder(config.gateway), hostchecks.address_space(data, config)]


def _tool_checks() -> list[Check]:
    checks = []
    for tool, package, purpose in TOOLS:
        found = shutil.which(tool)
        detail = found or f"missing: apt-get install {package}"
        checks.append(Check(f"{tool} ({purpose})", found is not None, detail, required=tool != "mmdebstrap"))
    return checks


def _asset_checks(data: Path) -> list[Check]:
    checks = []
    for result in assets_status(data):
        detail = str(result.path) if result.state is State.OK else f"{result.state}: {result.detail}"
        checks.append(Check(f"asset {result.name}", result.state is State.OK, detail))
    return checks


def _accelerator_check(data: Path, refresh: bool) -> tuple[Check, Accel | None]:
    """The probe's answer as a check, and the accelerator QEMU will use (None when unknown)."""
    assets = paths.assets_dir(data)
    try:
        answer = asyncio.run(
            probe.probe_accelerator(assets / "vmlinux", assets / "rootfs.ext4", data=data, force=refresh)
        )
    except (VmmError, OSError) as exc:
        return Check("accelerator", False, str(exc)), None
    backend = "firecracker" if answer.kvm_boots_guests else "qemu (TCG: guests 10-50x slower)"
    return Check("accelerator", True, f"{answer.summary()}; --vmm auto uses {backend}"), answer.accel


def _vmm_account_check(accel: Accel | None) -> Check:
    """The account QEMU runs as exists; under KVM it may open /dev/kvm (``qemu.confine``)."""
    try:
        account = vmm_account()
        if accel is not None:
            kvm_groups(accel, account)
    except VmmConfigError as exc:
        return Check(f"VMM account {VMM_USER}", False, str(exc))
    detail = f"uid {account.uid}, gid {account.gid}: QEMU runs as it, chrooted"
    if accel is Accel.KVM:
        detail += "; may open /dev/kvm"
    return Check(f"VMM account {VMM_USER}", True, detail)


@click.command()
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False),
    envvar=paths.DATA_DIR_ENV,
    help="Data directory (default /var/lib/clawpot).",
)
@click.option("--refresh", is_flag=True, help="Probe KVM again instead of using the cached answer.")
@click.option("--bridge", default=limits.DEFAULT_BRIDGE, show_default=True, help="The server's bridge.")
@click.option("--subnet", default=limits.DEFAULT_SUBNET, show_default=True, help="The server's VM subnet.")
@click.option("--output", "-o", type=click.Choice(["table", "json"]), default="table", show_default=True)
def doctor(data_dir: Path | None, refresh: bool, bridge: str, subnet: str, output: str) -> None:
    """Check this host: tools, installed assets, /dev/kvm and which backend `--vmm auto` picks; nftables,
    the bridge, the DNS forwarder, cgroups and free VM addresses.

    Exits 1 when something Clawpot needs is missing or broken.
    """
    data = paths.data_dir(data_dir)
    kvm_problem = probe.kvm_device_problem()
    provider = probe.kvm_provider()
    checks = [
        Check(
            "/dev/kvm",
            kvm_problem is None,
            kvm_problem or f"usable ({probe.describe_provider(provider)})",
            required=False,
        ),
        *_tool_checks(),
        *_network_checks(data, bridge, subnet),
        hostchecks.cgroups(),
        *_asset_checks(data),
    ]
    assets_ok = all(c.ok for c in checks if c.name.startswith("asset "))
    accel = None
    if assets_ok and shutil.which("qemu-system-x86_64"):
        check, accel = _accelerator_check(data, refresh)
        checks.append(check)
    checks.append(_vmm_account_check(accel))
    healthy = all(c.ok for c in checks if c.required)
    if output == "json":
        click.echo(json.dumps({"healthy": healthy, "checks": [asdict(c) for c in checks]}, indent=2))
    else:
        table = Table(box=None, pad_edge=False)
        for column in ("CHECK", "", "DETAIL"):
            table.add_column(column)
        for c in checks:
            mark = "[green]ok[/]" if c.ok else ("[red]FAIL[/]" if c.required else "[yellow]--[/]")
            table.add_row(c.name, mark, c.detail)
        Console(soft_wrap=True).print(table)
    sys.exit(0 if healthy else 1)
