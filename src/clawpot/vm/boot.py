"""The boot recipe of a ``Vm`` (``clawpot.vm.handle``): a visible list of named steps::

    validate → prepare directory → writable layer → kernel command line → start VMM → wait for agent

and for a VM restored from a snapshot (``restore_steps``)::

    prepare directory → restore VMM → wait for agent

Each step logs its name and returns the undo of what it created (or None); the handle pushes the undos
on its cleanup stack. Variants (a restore, a pool checkout) edit a copy of ``boot_steps()``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from clawpot import limits
from clawpot.agent_client import wait_ready
from clawpot.assets.bootargs import guest_cmdline
from clawpot.assets.scratch import make_scratch_disk
from clawpot.vm import validation
from clawpot.vm.config import VmConfig
from clawpot.vm.directory import VmDirectory
from clawpot.vm.errors import VmError
from clawpot.vmm.base import VmmProcess
from clawpot.vmm.logtail import tail_lines
from clawpot.vmm.spec import Drive, VmSpec

if TYPE_CHECKING:
    from clawpot.vm.handle import Vm

Undo = Callable[[], Awaitable[None]]
# Guest device of the writable layer: the second drive after the root.
OVERLAY_DEVICE = "/dev/vdb"
# Console lines quoted in a readiness failure.
CONSOLE_TAIL_LINES = 8


@dataclass(frozen=True)
class Step:
    """One named boot step. ``run`` returns the undo of what it created, or None."""

    name: str
    run: Callable[[Vm], Awaitable[Undo | None]]


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    return str(exc) or type(exc).__name__


def _config(vm: Vm) -> VmConfig:
    assert vm.config is not None, "only a VM with a config boots"
    return vm.config


async def _validate(vm: Vm) -> None:
    validation.validate(_config(vm), vms_root=vm.root, capabilities=vm.backend.capabilities())


async def _prepare_directory(vm: Vm) -> Undo:
    vm.directory = VmDirectory.create(vm.id, vm.root)
    vm.directory.write_metadata(vm.metadata())
    directory = vm.directory

    async def remove() -> None:
        directory.remove()

    return remove


async def _writable_layer(vm: Vm) -> None:
    assert vm.directory is not None
    # mkfs.ext4 is a subprocess; keep the event loop (and other VMs' watchers) running meanwhile.
    # Removing the directory removes the disk, so there is no separate undo.
    await asyncio.to_thread(make_scratch_disk, vm.directory.scratch_disk, _config(vm).scratch_mib)


async def _kernel_cmdline(vm: Vm) -> None:
    assert vm.directory is not None
    config = _config(vm)
    boot_args = config.boot_args
    if boot_args is None:
        boot_args = guest_cmdline(
            overlay_device=OVERLAY_DEVICE if config.writable_layer else None, extra=config.extra_boot_args
        )
    drives = [Drive("rootfs", config.rootfs, read_only=True)]
    if config.writable_layer:
        drives.append(Drive("scratch", vm.directory.scratch_disk, read_only=False))
    vm.spec = VmSpec(
        kernel=config.kernel,
        boot_args=boot_args,
        drives=tuple(drives),
        vcpus=config.vcpus,
        memory_mib=config.memory_mib,
        network_interfaces=config.network_interfaces,
        agent_channel=config.agent_channel,
        labels=dict(config.labels),
    )


async def _start_vmm(vm: Vm) -> Undo:
    assert vm.directory is not None and vm.spec is not None
    return await _run_vmm(vm, vm.backend.prepare(vm.spec, vm.directory.path))


def _restore_vmm(snapshot: Path) -> Callable[[Vm], Awaitable[Undo]]:
    async def run(vm: Vm) -> Undo:
        assert vm.directory is not None
        nics = _config(vm).network_interfaces
        return await _run_vmm(vm, vm.backend.restore(snapshot, vm.directory.path, network_interfaces=nics))

    return run


async def _run_vmm(vm: Vm, vmm: VmmProcess) -> Undo:
    assert vm.directory is not None
    vm.vmm = vmm
    await vmm.start()
    vm._watch(vmm)
    vm.directory.write_metadata(vm.metadata())

    async def kill() -> None:
        # Reaps and removes the VMM's sockets; harmless when it already exited.
        await vmm.kill()

    return kill


async def _wait_for_agent(vm: Vm) -> Undo:
    assert vm.vmm is not None
    endpoint = vm.vmm.agent_endpoint
    if endpoint is None:
        raise VmError("cannot wait for the agent: the VM has no agent channel")
    ready = asyncio.create_task(wait_ready(endpoint, _config(vm).ready_timeout))
    exited = asyncio.create_task(vm.vmm.wait())
    try:
        done, _ = await asyncio.wait({ready, exited}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        exited.cancel()
        if not ready.done():
            ready.cancel()
    if ready not in done:
        with contextlib.suppress(BaseException):
            await ready
        raise VmError(_with_console_tail(exited.result().reason, vm.vmm.serial_log))
    try:
        # Kept open and handed to whoever uses the VM next: a serial-port channel serves exactly one
        # host connection, so closing this one and opening another would only add a reconnect.
        agent = ready.result()
    except Exception as exc:
        raise VmError(_with_console_tail(_describe(exc), vm.vmm.serial_log)) from exc
    vm.agent = agent

    async def close() -> None:
        vm.agent = None
        await agent.close()

    return close


def _with_console_tail(reason: str, serial_log: Path, lines: int = CONSOLE_TAIL_LINES) -> str:
    """``reason`` plus the guest's last console lines: a guest that never became ready says why there,
    and its directory (with the log) is removed by the undo that follows. The console is the guest's
    text: read bounded and printable only (``vmm.logtail``)."""
    tail = [line.rstrip() for line in tail_lines(serial_log, limits.CONSOLE_TAIL_BYTES) if line.strip()]
    if not tail:
        return f"{reason} (the guest printed nothing on its console)"
    return "\n".join([reason, "last lines of the guest console:", *(f"  {line}" for line in tail[-lines:])])


def restore_steps(snapshot: Path) -> list[Step]:
    """A VM restored from ``snapshot`` (a directory of ``clawpot.vmm.snapshot``): no writable layer
    nor command line to make (the snapshot carries both); the VMM's restore recipe verifies the files,
    copies the writable layer, loads the state and resumes the guest; then its agent must answer."""
    return [
        Step("prepare directory", _prepare_directory),
        Step("restore VMM", _restore_vmm(snapshot)),
        Step("wait for agent", _wait_for_agent),
    ]


def boot_steps(config: VmConfig) -> list[Step]:
    """The default boot recipe for ``config``; variants edit a copy of this list."""
    steps = [Step("validate", _validate), Step("prepare directory", _prepare_directory)]
    if config.writable_layer:
        steps.append(Step("writable layer", _writable_layer))
    steps += [Step("kernel command line", _kernel_cmdline), Step("start VMM", _start_vmm)]
    if config.wait_ready:
        steps.append(Step("wait for agent", _wait_for_agent))
    return steps
