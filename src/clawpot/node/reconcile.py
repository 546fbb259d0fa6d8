"""At start, make the node agree with what is on disk and running.

- A VM whose row says Running or Paused and whose VMM still runs (same PID, same start time) is attached: its
  backend's ``attach`` hands back a ``VmmProcess``, and it gets the same ``Vm`` handle as a VM booted
  here (watched, stoppable, its agent reachable).
- A VM whose VMM is gone is marked Error with the reason, and what it held is freed (its address too).
- A VM that was Starting or Stopping when the last server died is finished off.
- A VM directory no row owns is removed (its VMM killed first), and the network is made to agree.
- A VM of the warm pool (not handed out) is removed, row and all: VMM, TAP, address, directory. The
  new server makes its pool afresh (its templates, hidden snapshots, were swept before this).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from clawpot import limits
from clawpot.node import console, orphans
from clawpot.node.events import EventKind
from clawpot.node.records import endpoint_from_text
from clawpot.node.resources import release, release_network
from clawpot.node.store import Origin, VmRecord
from clawpot.node.vms import NodeVm
from clawpot.vm import procfs
from clawpot.vm.handle import Vm
from clawpot.vm.state import VmState
from clawpot.vmm.adopted import kill_pid
from clawpot.vmm.base import AttachRecord, VmmError, VmmProcess

if TYPE_CHECKING:
    from clawpot.node.node import Node

log = logging.getLogger(__name__)

# The states whose VMM a restarted server takes back; a Paused VM stays paused until resumed.
ATTACHABLE = (VmState.RUNNING, VmState.PAUSED)


async def reconcile(node: Node) -> None:
    node.vms_root.mkdir(parents=True, exist_ok=True)
    for record in node.store.list():
        if record.origin is Origin.WARM:
            await _remove_warm(node, record)
            continue
        nvm = NodeVm(record, node.config.agent_timeout)
        node.vms[record.id] = nvm
        alive = record.pid is not None and procfs.is_alive(record.pid, record.vmm_start_ticks)
        if record.state in ATTACHABLE and alive and record.pid is not None:
            try:
                await attach(node, nvm, record.pid)
                log.info("adopted VM %s (VMM pid %d, %s)", record.id, record.pid, nvm.record.state)
                continue
            except VmmError as exc:  # exited between the check and the attach
                log.warning("VM %s: cannot attach its VMM: %s", record.id, exc)
        elif alive and record.pid is not None:
            # Stopping when the last server died: finish it off (PID + start time checked above).
            with contextlib.suppress(OSError):
                await kill_pid(record.pid)
        # Starting when the last server died: the VMM may run, but its PID is recorded only once the
        # VM is Running.
        await orphans.kill_vmm_of(record.vm_dir)
        await asyncio.to_thread(orphans.remove_cgroup_of, record.vm_dir)
        if record.state is not VmState.ERROR or record.ip_address:
            reason = record.error or f"VMM process gone when the server restarted (was {record.state})"
            # The address is released below: a VM that no longer holds it must not show it.
            nvm.record = record.with_(state=VmState.ERROR, error=reason, pid=None, ip_address="")
            node.store.update(nvm.record)
            log.warning("VM %s: %s", record.id, reason)
            if record.state is not VmState.ERROR:
                node.events.emit(nvm.record, EventKind.ERROR, reason)
        # Its console stays until the VM is deleted (`clawpot logs` shows how it ended).
        await release_network(node.network, nvm.record)
        await asyncio.to_thread(console.keep_only_console, node.console_path(nvm))
    known = set(node.vms)
    for path in sorted(node.vms_root.iterdir()) if node.vms_root.exists() else []:
        if path.name not in known:
            await orphans.remove_orphan_dir(path)
    if node.network is not None:
        keep = [nvm.id for nvm in node.vms.values() if nvm.record.state is not VmState.ERROR]
        plan = await asyncio.to_thread(node.network.reconcile, keep)
        log.info("network reconciled: %s", plan)
        for nvm in node.vms.values():
            nvm.network = node.network.policy(nvm.id)


async def _remove_warm(node: Node, record: VmRecord) -> None:
    if record.pid is not None and procfs.is_alive(record.pid, record.vmm_start_ticks):
        with contextlib.suppress(OSError):
            await kill_pid(record.pid)
    await orphans.kill_vmm_of(record.vm_dir)  # one still starting has no PID recorded yet
    await asyncio.to_thread(orphans.remove_cgroup_of, record.vm_dir)
    await release(node.network, record)
    node.store.delete(record.id)
    log.info("removed warm pool VM %s left by the last server", record.id)


async def attach(node: Node, nvm: NodeVm, pid: int) -> None:
    """Give ``nvm`` the handle of its running VMM (raises ``VmmError`` if it is gone), Running or
    Paused as the VMM itself reports where it can (``_run_state``)."""
    record = nvm.record
    endpoint = endpoint_from_text(record.agent_endpoint)
    backend = node.backends.for_attach(record.backend)
    vmm = backend.attach(AttachRecord(pid, record.vmm_start_ticks, record.vm_dir, endpoint))
    state = await _run_state(record, vmm)
    if state is not record.state:
        nvm.record = record = record.with_(state=state)
        node.store.update(record)
    nvm.vm = Vm.attach(
        record.id, backend, vmm, root=node.vms_root, stop_grace=node.config.stop_grace, state=state
    )
    nvm.vm.lifecycle.subscribe(lambda event: node._on_transition(nvm, event))
    nvm.agent.endpoint = endpoint


# QEMU's run states (query-status) that mean a paused VM; "postmigrate" is where a snapshot leaves it.
_QEMU_PAUSED = frozenset({"paused", "postmigrate"})


async def _run_state(record: VmRecord, vmm: VmmProcess) -> VmState:
    """The state the VMM reports, where it can say (QEMU over QMP): a server that died between pausing
    a VM and recording it must not adopt a paused VM as Running, nor the reverse. The VMM is the truth;
    without an answer the store's word stands."""
    status = getattr(vmm, "status", None)
    if status is None:
        return record.state
    try:
        async with asyncio.timeout(limits.DEFAULT_AGENT_TIMEOUT):
            reported = str(await status())
    except Exception as exc:
        log.info("VM %s: VMM run state not read (%s); keeping %s", record.id, exc, record.state)
        return record.state
    state = VmState.PAUSED if reported in _QEMU_PAUSED else VmState.RUNNING if reported == "running" else None
    if state is None:
        return record.state
    if state is not record.state:
        log.warning("VM %s: recorded %s, its VMM says %s: now %s", record.id, record.state, reported, state)
    return state
