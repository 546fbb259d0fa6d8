"""`clawpot create | list | get | delete | pause | resume | snapshot | snapshots | fork | timeout`."""

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
from clawpot.cli.network import egress_options, publish_messages
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
    "--disk",
    "disk_mib",
    type=click.IntRange(min=1),  # the server says what is too small or too big, with its numbers
    default=limits.DEFAULT_DISK_MIB,
    show_default=True,
    metavar="MiB",
    help="Size of the VM's writable layer in MiB: all the host disk its guest can fill (then ENOSPC).",
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
@click.option(
    "--from",
    "from_snapshot",
    default="",
    metavar="SNAPSHOT",
    help="Restore this snapshot (`clawpot snapshots`) instead of booting: its vcpus, memory, disk, VMM.",
)
@egress_options
@click.option("--no-internet", is_flag=True, help="Forward nothing the VM sends (DNS refused too).")
@click.option(
    "--publish",
    multiple=True,
    metavar="[HOSTADDR:]HOSTPORT:GUESTPORT[/tcp|udp]",
    help="Forward a host port to the VM (repeatable; HOSTADDR defaults to 127.0.0.1).",
)
@click.option(
    "--timeout",
    "timeout_seconds",
    type=click.IntRange(limits.MIN_VM_TIMEOUT, limits.MAX_VM_TIMEOUT),
    default=None,
    metavar="SECONDS",
    help="Delete the VM this long after it runs (counted from when create returns; `clawpot timeout` "
    "changes it). Default: the server's --vm-timeout, none unless set.",
)
@click.pass_context
def create(
    ctx: click.Context,
    vcpus: int,
    memory_mib: int,
    disk_mib: int,
    vmm: str,
    ip_address: str,
    allow_peers: bool,
    labels: tuple[str, ...],
    from_snapshot: str,
    allow_out: tuple[str, ...],
    deny_out: tuple[str, ...],
    no_internet: bool,
    publish: tuple[str, ...],
    timeout_seconds: int | None,
) -> None:
    """Create a VM, wait until its agent answers, print its id."""
    server: str = ctx.obj

    def given(name: str) -> bool:
        # A restore takes the snapshot's shape: send only what the user chose (the server checks it).
        return not from_snapshot or ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT

    request = vm_pb2.CreateVmRequest(
        vcpus=vcpus if given("vcpus") else 0,
        memory_mib=memory_mib if given("memory_mib") else 0,
        disk_mib=disk_mib if given("disk_mib") else 0,
        backend=BACKENDS[vmm],
        ip_address=ip_address,
        allow_peer_traffic=allow_peers,
        labels=_parse_labels(labels),
        from_snapshot=from_snapshot,
        egress=vm_pb2.EgressPolicy(allow_out=allow_out, deny_out=deny_out, no_internet=no_internet),
        publish=publish_messages(publish),
        timeout_seconds=timeout_seconds or 0,
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
    data["origin"] = vm_pb2.VmOrigin.Name(vm.origin).removeprefix("VM_ORIGIN_").lower()
    return data


def _print_json(data: object) -> None:
    # ensure_ascii (the default) writes every control and non-ASCII character as a \uXXXX escape, so
    # guest-chosen labels or hostnames cannot reach the terminal as escape sequences.
    click.echo(json.dumps(data, indent=2, ensure_ascii=True))


def _cell(text: str) -> Text:
    # A rich Text, not a str: a str cell would be parsed as console markup ("[link=...]").
    return Text(safe(text))


def _age(vm: vm_pb2.Vm) -> str:
    return _age_of(vm.created_at.ToSeconds())


def _age_of(created: float) -> str:
    seconds = max(0, int(time.time() - created))
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
@click.option("--pool", "include_pool", is_flag=True, help="Also list the server's warm pool VMs.")
@click.pass_obj
def list_vms(server: str, output: str, include_pool: bool) -> None:
    """List VMs: id, state, agent health, backend, vcpus, memory, ip, age."""
    vms: list[vm_pb2.Vm] = []
    with stub(server) as api:
        token = ""
        while True:  # the server answers in pages; follow them to the end
            page = api.ListVms(
                vm_pb2.ListVmsRequest(
                    page_size=limits.MAX_PAGE_SIZE, page_token=token, include_pool=include_pool
                )
            )
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


@click.command()
@click.argument("vm_id", metavar="ID")
@click.argument("name", metavar="NAME")
@click.pass_obj
def snapshot(server: str, vm_id: str, name: str) -> None:
    """Snapshot a running or paused VM as NAME (it is paused meanwhile; a running VM runs on after)."""
    with stub(server) as api:
        snap = api.SnapshotVm(vm_pb2.SnapshotVmRequest(vm_id=vm_id, name=name))
    click.echo(safe(snap.name))


@click.command()
@click.argument("vm_id", metavar="ID")
@click.option("-n", "--count", type=click.IntRange(1, limits.MAX_FORK_COUNT), default=1, show_default=True)
@click.pass_obj
def fork(server: str, vm_id: str, count: int) -> None:
    """Copy a running VM N times: each copy runs on from the same moment with its own id, address, MAC
    and hostname; the VM itself runs on. Prints the copies' ids, one a line."""
    with stub(server) as api:
        reply = api.ForkVm(vm_pb2.ForkVmRequest(id=vm_id, count=count))
    for vm in reply.vms:
        click.echo(safe(vm.id))


def _snapshot_to_dict(snap: vm_pb2.Snapshot) -> dict[str, Any]:
    data = MessageToDict(snap, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    data["backend"] = vm_pb2.Backend.Name(snap.backend).removeprefix("BACKEND_").lower()
    data["size_bytes"] = snap.size_bytes  # an int, not the string JSON mapping gives 64-bit fields
    return data


@click.group(invoke_without_command=True)
@click.option("--output", "-o", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.pass_context
def snapshots(ctx: click.Context, output: str) -> None:
    """List snapshots: name, VMM, vcpus, memory, size on disk, age, the VMs restored from it.
    `clawpot snapshots rm NAME` deletes one."""
    if ctx.invoked_subcommand is not None:
        return
    with stub(ctx.obj) as api:
        found = list(api.ListSnapshots(vm_pb2.ListSnapshotsRequest()).snapshots)
    if output == "json":
        _print_json([_snapshot_to_dict(s) for s in found])
        return
    table = Table(box=None, pad_edge=False)
    for column in ("NAME", "BACKEND", "VCPUS", "MEMORY", "SIZE", "AGE", "USED-BY"):
        table.add_column(column)
    for snap in found:
        table.add_row(
            _cell(snap.name),
            _cell(vm_pb2.Backend.Name(snap.backend).removeprefix("BACKEND_").lower()),
            _cell(str(snap.vcpus)),
            _cell(f"{snap.memory_mib}MiB"),
            _cell(f"{snap.size_bytes / (1 << 20):.0f}MiB"),
            _cell(_age_of(snap.created_at.ToSeconds())),
            _cell(",".join(snap.used_by) or "-"),
        )
    Console(soft_wrap=True).print(table)


@snapshots.command("rm")
@click.argument("names", metavar="NAME...", nargs=-1, required=True)
@click.pass_obj
def remove_snapshots(server: str, names: tuple[str, ...]) -> None:
    """Delete snapshots (refused while a VM restored from one still exists)."""
    with stub(server) as api:
        for name in names:
            api.DeleteSnapshot(vm_pb2.DeleteSnapshotRequest(name=name))
            click.echo(safe(name))


@click.command()
@click.argument("vm_id", metavar="ID")
@click.argument("seconds", metavar="SECONDS", type=click.IntRange(0, limits.MAX_VM_TIMEOUT))
@click.pass_obj
def timeout(server: str, vm_id: str, seconds: int) -> None:
    """Delete VM ID SECONDS from now (extends or shortens its lifetime; 0: no lifetime). Prints when."""
    with stub(server) as api:
        vm = api.SetVmTimeout(vm_pb2.SetVmTimeoutRequest(id=vm_id, timeout_seconds=seconds))
    click.echo(vm.expires_at.ToJsonString() if vm.HasField("expires_at") else "never")
