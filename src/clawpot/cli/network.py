"""`clawpot network ID [--allow-out ...] [--deny-out ...] [--no-internet|--internet] [--reset]` and
`clawpot port ID`; the egress and --publish options `clawpot create` shares with them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from clawpot.cli.connection import stub
from clawpot.cli.terminal import safe
from clawpot.network.policy import PolicyError, PortForward
from clawpot.v1 import vm_pb2

F = TypeVar("F", bound=Callable[..., Any])


def egress_options(fn: F) -> F:
    """--allow-out and --deny-out, repeatable (``create`` and ``network``)."""
    fn = click.option(
        "--deny-out",
        multiple=True,
        metavar="CIDR|DOMAIN",
        help="Never let the VM reach this network, nor resolve this domain (repeatable; wins over allow).",
    )(fn)
    return click.option(
        "--allow-out",
        multiple=True,
        metavar="CIDR|DOMAIN",
        help="Let the VM reach only these networks and domains (repeatable; any makes the rest denied).",
    )(fn)


def publish_messages(specs: tuple[str, ...]) -> list[vm_pb2.PortForward]:
    try:
        ports = [PortForward.parse(spec) for spec in specs]
    except PolicyError as exc:
        raise click.BadParameter(str(exc), param_hint="--publish") from None
    return [
        vm_pb2.PortForward(
            host_address=str(p.host_address),
            host_port=p.host_port,
            guest_port=p.guest_port,
            protocol=p.protocol,
        )
        for p in ports
    ]


def describe(egress: vm_pb2.EgressPolicy) -> str:
    lines = [f"internet: {'no' if egress.no_internet else 'yes'}"]
    lines.append("allow-out: " + (", ".join(map(safe, egress.allow_out)) or "(everything)"))
    lines.append("deny-out: " + (", ".join(map(safe, egress.deny_out)) or "(nothing)"))
    return "\n".join(lines)


@click.command()
@click.argument("vm_id", metavar="ID")
@egress_options
@click.option(
    "--no-internet/--internet", "no_internet", default=None, help="Forward nothing / forward again."
)
@click.option("--reset", is_flag=True, help="Start from the default policy instead of the VM's current one.")
@click.pass_obj
def network(
    server: str,
    vm_id: str,
    allow_out: tuple[str, ...],
    deny_out: tuple[str, ...],
    no_internet: bool | None,
    reset: bool,
) -> None:
    """Show or change a running VM's egress policy (applied at once, kept across restarts).

    Each given list replaces the VM's list of that kind; what is not given stays as it is.
    """
    with stub(server) as api:
        vm = api.GetVm(vm_pb2.GetVmRequest(id=vm_id))
        if not (allow_out or deny_out or no_internet is not None or reset):
            click.echo(describe(vm.egress))
            return
        egress = vm_pb2.EgressPolicy()
        if not reset:
            egress.CopyFrom(vm.egress)
        if allow_out:
            egress.ClearField("allow_out")
            egress.allow_out.extend(allow_out)
        if deny_out:
            egress.ClearField("deny_out")
            egress.deny_out.extend(deny_out)
        if no_internet is not None:
            egress.no_internet = no_internet
        vm = api.SetVmNetwork(vm_pb2.SetVmNetworkRequest(id=vm_id, egress=egress))
    click.echo(describe(vm.egress))


@click.command()
@click.argument("vm_id", metavar="ID")
@click.pass_obj
def port(server: str, vm_id: str) -> None:
    """List a VM's published ports: HOSTADDR:HOSTPORT -> GUESTPORT/PROTO."""
    with stub(server) as api:
        vm = api.GetVm(vm_pb2.GetVmRequest(id=vm_id))
    for p in vm.published:
        click.echo(f"{safe(p.host_address)}:{p.host_port} -> {p.guest_port}/{safe(p.protocol)}")
