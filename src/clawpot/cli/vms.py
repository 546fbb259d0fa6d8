"""`clawpot create | list | get | delete | pause | resume`."""

from __future__ import annotations

import json
import time
from typing import Any

import click
from google.protobuf.json_format import MessageToDict
from rich.console import Console
from rich.table import Table
from rich.text import Text

from clawpot import limits
from clawpot.cli.connection import stub
from clawpot.cli.terminal import safe
from clawpot.v1 import vm_pb2

BACKENDS = {
    "auto": vm_pb2.BACKEND_UNSPECIFIED,
    "firecracker": vm_pb2.BACKEND_FIRECRACKER,
    "qemu": vm_pb2.BACKEND_QEMU,
}


def _parse_labels(values: tuple[str, ...]) -> dict[str, str]:
    labels = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {value!r}", param_hint="--label")
        labels[key] = val
    return labels


@click.command()
@click.option(
    "--vcpus",
    type=click.IntRange(limits.MIN_VCPUS, limits.MAX_VCPUS),
    default=limits.DEFAULT_VCPUS,
    show_default=True,
    help="Virtual CPUs.",
)
@click.option(
    "--memory",
    "memory_mib",
    type=click.IntRange(min=1),  # the server says what is too small or too big, with its numbers
    default=limits.DEFAULT_MEMORY_MIB,
    show_default=True,
    metavar="MiB",
    help="Guest memory in MiB.",
)
@click.option(
    "--vmm",
    type=click.Choice(list(BACKENDS)),
    default="auto",
    show_default=True,
    help="Hypervisor; auto = Firecracker where KVM boots guests, else QEMU.",
)
@click.option(
    "--ip", "ip_address", default="", metavar="ADDR", help="Request this free address in the VM subnet."
)
@click.option("--allow-peers", is_flag=True, help="Let other --allow-peers VMs reach this one.")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="Attach a label (repeatable).")
@click.pass_obj
def create(
    server: str,
    vcpus: int,
    memory_mib: int,
    vmm: str,
    ip_address: str,
    allow_peers: bool,
    labels: tuple[str, ...],
) -> None:
    """Create a VM, wait until its agent answers, print its id."""
    request = vm_pb2.CreateVmRequest(
        vcpus=vcpus,
        memory_mib=memory_mib,
        backend=BACKENDS[vmm],
        ip_address=ip_address,
        allow_peer_traffic=allow_peers,
        labels=_parse_labels(labels),
    )
    with stub(server) as api:
        vm = api.CreateVm(request)
    click.echo(safe(vm.id))


def vm_to_dict(vm: vm_pb2.Vm) -> dict[str, Any]:
    """The VM as JSON-ready data, enums named as the table names them (``running``, ``qemu``)."""
    data = MessageToDict(vm, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    data["state"] = _state(vm).lower()
    data["backend"] = _backend(vm)
    data["health"] = vm_pb2.AgentHealth.Name(vm.health).removeprefix("AGENT_HEALTH_").lower()
    return data


def _print_json(data: object) -> None:
    # ensure_ascii (the default) writes every control and non-ASCII character as a \uXXXX escape, so
    # guest-chosen labels or hostnames cannot reach the terminal as escape sequences.
    click.echo(json.dumps(data, indent=2, ensure_ascii=True))


def _cell(text: str) -> Text:
    # A rich Text, not a str: a str cell would be parsed as console markup ("[link=...]").
    return Text(safe(text))


def _age(vm: vm_pb2.Vm) -> str:
    seconds = max(0, int(time.time() - vm.created_at.ToSeconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _state(vm: vm_pb2.Vm) -> str:
    return vm_pb2.VmState.Name(vm.state).removeprefix("VM_STATE_").capitalize()


def _backend(vm: vm_pb2.Vm) -> str:
    return vm_pb2.Backend.Name(vm.backend).removeprefix("BACKEND_").lower()


def _health(vm: vm_pb2.Vm) -> str:
    if vm.health == vm_pb2.AGENT_HEALTH_UNKNOWN:
        return "-"
    return vm_pb2.AgentHealth.Name(vm.health).removeprefix("AGENT_HEALTH_").lower()


@click.command("list")
@click.option("--output", "-o", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.pass_obj
def list_vms(server: str, output: str) -> None:
    """List VMs: id, state, agent health, backend, vcpus, memory, ip, age."""
    vms: list[vm_pb2.Vm] = []
    with stub(server) as api:
        token = ""
        while True:  # the server answers in pages; follow them to the end
            page = api.ListVms(vm_pb2.ListVmsRequest(page_size=limits.MAX_PAGE_SIZE, page_token=token))
            vms.extend(page.vms)
            if not (token := page.next_page_token):
                break
    if output == "json":
        _print_json([vm_to_dict(vm) for vm in vms])
        return
    table = Table(box=None, pad_edge=False)
    for column in ("ID", "STATE", "HEALTH", "BACKEND", "VCPUS", "MEMORY", "IP", "AGE"):
        table.add_column(column)
    for vm in vms:
        table.add_row(
            _cell(vm.id),
            _cell(_state(vm)),
            _cell(_health(vm)),
            _cell(_backend(vm)),
            _cell(str(vm.vcpus)),
            _cell(f"{vm.memory_mib}MiB"),
            _cell(vm.ip_address or "-"),
            _cell(_age(vm)),
        )
    Console(soft_wrap=True).print(table)


@click.command()
@click.argument("vm_id", metavar="ID")
@click.pass_obj
def get(server: str, vm_id: str) -> None:
    """Show one VM as JSON (with its agent's health and since when)."""
    with stub(server) as api:
        vm = api.GetVm(vm_pb2.GetVmRequest(id=vm_id))
    _print_json(vm_to_dict(vm))


@click.command()
@click.argument("vm_ids", metavar="ID...", nargs=-1, required=True)
@click.pass_obj
def delete(server: str, vm_ids: tuple[str, ...]) -> None:
    """Stop VMs and free everything they held."""
    with stub(server) as api:
        for vm_id in vm_ids:
            api.DeleteVm(vm_pb2.DeleteVmRequest(id=vm_id))
            click.echo(safe(vm_id))


@click.command()
@click.argument("vm_id", metavar="ID")
@click.pass_obj
def pause(server: str, vm_id: str) -> None:
    """Stop a VM's vCPUs; it keeps its memory, address and TAP until `clawpot resume`."""
    with stub(server) as api:
        vm = api.PauseVm(vm_pb2.PauseVmRequest(id=vm_id))
    click.echo(safe(vm.id))


@click.command()
@click.argument("vm_id", metavar="ID")
@click.pass_obj
def resume(server: str, vm_id: str) -> None:
    """Run a paused VM again."""
    with stub(server) as api:
        vm = api.ResumeVm(vm_pb2.ResumeVmRequest(id=vm_id))
    click.echo(safe(vm.id))
