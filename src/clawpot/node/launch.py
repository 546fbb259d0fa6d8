"""Boot one reserved VM on this node: network slot → guest identity → ``Vm.start`` (the boot recipe
of ``clawpot.vm.boot``) → the record says Running. Or restore one from a snapshot (``restore``):
network slot → ``Vm.start`` with the restore steps → identity through the agent → Running.
The caller (``Node.boot``) undoes everything
when this raises: the handle's own cleanup stack, then ``resources.release`` and the row."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from clawpot import errors
from clawpot.agent_client import GuestError, GuestIdentity
from clawpot.assets.bootargs import GuestIp, guest_cmdline
from clawpot.network import NetworkManager, NetworkSlot
from clawpot.network.policydb import VmNetworkPolicy
from clawpot.node.agents import one_line
from clawpot.node.datadir import Assets
from clawpot.node.records import endpoint_to_text
from clawpot.node.resources import attach_network
from clawpot.node.store import Store, VmRecord
from clawpot.node.vms import NodeVm
from clawpot.vm import procfs
from clawpot.vm.boot import OVERLAY_DEVICE, restore_steps
from clawpot.vm.config import VmConfig
from clawpot.vm.errors import VmError
from clawpot.vm.handle import Vm
from clawpot.vm.state import Transition, VmState
from clawpot.vmm.base import VmmBackend, VmmError
from clawpot.vmm.snapshot import Manifest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LaunchParams:
    assets: Assets
    vms_root: Path
    ready_timeout: float
    stop_grace: float
    ip_address: str | None = None
    allow_peers: bool = False
    policy: VmNetworkPolicy | None = None


async def launch(
    nvm: NodeVm,
    backend: VmmBackend,
    params: LaunchParams,
    network: NetworkManager | None,
    store: Store,
    on_transition: Callable[[NodeVm, Transition], None],
) -> VmRecord:
    vm_id = nvm.id
    slot = await attach_network(
        network, vm_id, params.ip_address, allow_peers=params.allow_peers, policy=params.policy
    )
    if slot is not None:
        nvm.record = nvm.record.with_(ip_address=str(slot.address))
        store.update(nvm.record)
    config = VmConfig(
        kernel=params.assets.kernel,
        rootfs=params.assets.rootfs,
        vcpus=nvm.record.vcpus,
        memory_mib=nvm.record.memory_mib,
        scratch_mib=nvm.record.disk_mib,
        boot_args=boot_args(vm_id, slot),
        network_interfaces=(slot.interface(),) if slot is not None else (),
        ready_timeout=params.ready_timeout,
        labels=dict(nvm.record.labels),
    )
    vm = Vm(config, backend, vm_id=vm_id, root=params.vms_root, stop_grace=params.stop_grace)
    await _start(nvm, vm, on_transition)
    return _running(nvm, vm, store)


async def restore(
    nvm: NodeVm,
    backend: VmmBackend,
    params: LaunchParams,
    network: NetworkManager | None,
    store: Store,
    on_transition: Callable[[NodeVm, Transition], None],
    snapshot: Path,
    manifest: Manifest,
) -> VmRecord:
    """A new VM from ``snapshot``: its own id, network slot (TAP, address, MAC) and hostname.

    The guest wakes up with the snapshotted VM's identity. Its new TAP lets through only the new MAC and
    address (the anti-spoofing rules of the slot), so until the agent's ``configure`` has given the
    guest its new hostname, address, gateway, DNS and MAC, nothing it sends leaves the TAP; only then
    is the VM Running and handed out. A configure that fails fails the create (all undone)."""
    vm_id = nvm.id
    started = time.monotonic()
    slot = await attach_network(
        network, vm_id, params.ip_address, allow_peers=params.allow_peers, policy=params.policy
    )
    if slot is not None:
        nvm.record = nvm.record.with_(ip_address=str(slot.address))
        store.update(nvm.record)
    attached = time.monotonic()
    config = VmConfig(
        kernel=Path(manifest.spec.kernel.path),
        rootfs=Path(manifest.rootfs.path),
        vcpus=manifest.spec.vcpus,
        memory_mib=manifest.spec.memory_mib,
        boot_args=manifest.spec.boot_args,
        network_interfaces=(slot.interface(),) if slot is not None else (),
        ready_timeout=params.ready_timeout,
        labels=dict(nvm.record.labels),
    )
    steps = restore_steps(snapshot)
    vm = Vm(config, backend, vm_id=vm_id, root=params.vms_root, stop_grace=params.stop_grace, steps=steps)
    await _start(nvm, vm, on_transition)
    restored = time.monotonic()
    assert vm.agent is not None
    try:
        # A copy of a snapshot also gets fresh RNG entropy and the host's clock (it stood still).
        configured = await vm.agent.configure(guest_identity(vm_id, slot).refreshed())
    except (GuestError, TimeoutError) as exc:
        raise errors.Unavailable(
            f"VM {vm_id}: cannot set its identity after the restore: {one_line(exc)}"
        ) from exc
    log.info(
        "VM %s restored: network %.0f ms, VMM to agent answering %.0f ms, identity %.0f ms (in the "
        "guest %.0f ms: %s)",
        vm_id,
        (attached - started) * 1000,
        (restored - attached) * 1000,
        (time.monotonic() - restored) * 1000,
        configured.duration * 1000,
        ", ".join(f"{step} {seconds * 1000:.0f}" for step, seconds in configured.steps),
    )
    return _running(nvm, vm, store)


def guest_identity(vm_id: str, slot: NetworkSlot | None) -> GuestIdentity:
    """What a restored guest must become: this VM, at this slot (hostname only without a network)."""
    if slot is None:
        return GuestIdentity(hostname=vm_id)
    return GuestIdentity(
        hostname=vm_id,
        address=f"{slot.address}/{slot.network.prefixlen}",
        gateway=str(slot.gateway),
        dns=[str(d) for d in slot.dns],
        mac=slot.mac,
    )


async def _start(nvm: NodeVm, vm: Vm, on_transition: Callable[[NodeVm, Transition], None]) -> None:
    nvm.vm = vm
    vm.lifecycle.subscribe(lambda event: on_transition(nvm, event))
    try:
        await vm.start()
    except (VmError, VmmError) as exc:
        raise errors.Unavailable(f"VM {vm.id} failed to start: {one_line(exc)}") from exc


def _running(nvm: NodeVm, vm: Vm, store: Store) -> VmRecord:
    """The record of a VM whose agent answered: Running, with how to find its VMM after a restart."""
    assert vm.vmm is not None
    nvm.agent.adopt(vm.agent, vm.vmm.agent_endpoint)
    pid = vm.vmm.pid
    nvm.record = nvm.record.with_(
        state=VmState.RUNNING,
        pid=pid,
        vmm_start_ticks=procfs.start_ticks(pid) if pid else None,
        agent_endpoint=endpoint_to_text(vm.vmm.agent_endpoint),
    )
    store.update(nvm.record)
    return nvm.record


def boot_args(vm_id: str, slot: NetworkSlot | None) -> str:
    """The guest's identity (hostname, address, DNS) on its kernel command line."""
    # The QEMU backend adds its TCG timer options itself when it runs without KVM.
    ip = None
    if slot is not None:
        ip = GuestIp(address=str(slot.address), gateway=str(slot.gateway), netmask=str(slot.netmask))
    return guest_cmdline(
        overlay_device=OVERLAY_DEVICE,
        hostname=vm_id,
        ip=ip,
        dns=",".join(str(d) for d in slot.dns) if slot is not None and slot.dns else None,
    )
