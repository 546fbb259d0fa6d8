"""The VM lifecycle on the real Firecracker, with a guest that stays put (a halting kernel, see
firecracker_helpers): stop while running and while starting, an unexpected exit, a failing boot step,
a configuration Firecracker rejects. After each: no process (by PID), no socket, no VM directory.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path

import pytest
from firecracker_helpers import (
    process_gone,
    require_available,
    write_blank_rootfs,
    write_halting_kernel,
)

from clawpot.vm import procfs
from clawpot.vm.boot import Step, boot_steps
from clawpot.vm.config import VmConfig
from clawpot.vm.errors import VmStartAborted, VmStartError
from clawpot.vm.handle import Vm
from clawpot.vm.state import VmState
from clawpot.vmm.firecracker.backend import FirecrackerBackend
from clawpot.vmm.firecracker.handle import FirecrackerVmm


@pytest.fixture
def backend(firecracker_bin: Path) -> FirecrackerBackend:
    backend = FirecrackerBackend(firecracker_bin)
    require_available(backend.capabilities())
    return backend


@pytest.fixture
def config(tmp_path: Path) -> VmConfig:
    return VmConfig(
        write_halting_kernel(tmp_path / "halt.elf"),
        write_blank_rootfs(tmp_path / "blank.img"),
        vcpus=1,
        memory_mib=64,
        wait_ready=False,
    )


def leftovers(vm: Vm, vmm: FirecrackerVmm, pid: int, ticks: int | None) -> list[str]:
    found = []
    if not process_gone(pid, ticks):
        found.append(f"firecracker pid {pid}")
    for path in (vmm.api_socket, vmm.vsock_path):
        if path.exists():
            found.append(str(path))
    if vm.directory is not None and vm.directory.path.exists():
        found.append(str(vm.directory.path))
    return found


def state_of(vm: Vm) -> VmState:
    # A call, so mypy does not carry an earlier `assert vm.state is ...` across awaits.
    return vm.state


def handle(vm: Vm) -> tuple[FirecrackerVmm, int, int | None]:
    vmm = vm.vmm
    assert isinstance(vmm, FirecrackerVmm) and vmm.pid is not None
    return vmm, vmm.pid, procfs.start_ticks(vmm.pid)


async def test_stop_a_running_vm(config: VmConfig, backend: FirecrackerBackend, tmp_path: Path) -> None:
    vm = Vm(config, backend, root=tmp_path / "vms", stop_grace=0.5)
    await vm.start()
    vmm, pid, ticks = handle(vm)
    assert vm.state is VmState.RUNNING
    assert vmm.api_socket.is_socket() and vmm.vsock_path.is_socket()
    assert vm.directory is not None and (vm.directory.path / "scratch.ext4").exists()
    meta = json.loads((vmm.vm_dir / "metadata.json").read_text())
    assert meta["state"] == "Running" and meta["vmm_pid"] == pid and meta["owner_pid"] == os.getpid()
    assert meta["control_socket"] == str(vmm.api_socket)
    await vm.stop()
    assert state_of(vm) is VmState.STOPPED
    assert [t.target for t in vm.lifecycle.history] == [
        VmState.STARTING, VmState.RUNNING, VmState.STOPPING, VmState.STOPPED,
    ]  # fmt: skip
    assert leftovers(vm, vmm, pid, ticks) == []


async def test_stop_a_starting_vm(config: VmConfig, backend: FirecrackerBackend, tmp_path: Path) -> None:
    reached = asyncio.Event()

    async def hold(vm: Vm) -> None:
        reached.set()
        await asyncio.sleep(3600)

    # Variants edit a copy of the recipe: hold the boot right after firecracker started the guest.
    steps = boot_steps(config)
    steps.insert([s.name for s in steps].index("start VMM") + 1, Step("hold", hold))
    vm = Vm(config, backend, root=tmp_path / "vms", steps=steps, stop_grace=0.5)
    starting = asyncio.create_task(vm.start())
    await asyncio.wait_for(reached.wait(), 60)
    vmm, pid, ticks = handle(vm)
    assert vm.state is VmState.STARTING
    await vm.stop()
    with pytest.raises(VmStartAborted):
        await starting
    assert state_of(vm) is VmState.STOPPED
    assert [t.target for t in vm.lifecycle.history] == [VmState.STARTING, VmState.STOPPING, VmState.STOPPED]
    assert leftovers(vm, vmm, pid, ticks) == []


async def test_unexpected_exit_of_a_running_vm(
    config: VmConfig, backend: FirecrackerBackend, tmp_path: Path
) -> None:
    vm = Vm(config, backend, root=tmp_path / "vms")
    await vm.start()
    vmm, pid, ticks = handle(vm)
    killed_at = time.time()
    os.kill(pid, signal.SIGKILL)
    await asyncio.wait_for(vm.wait_for(VmState.ERROR), 30)
    error = vm.lifecycle.history[-1]
    print(f"\nError recorded {error.at - killed_at:.3f}s after SIGKILL")
    assert vm.reason == "firecracker killed by SIGKILL"
    assert process_gone(pid, ticks)
    await vm.stop()
    assert state_of(vm) is VmState.STOPPED
    assert leftovers(vm, vmm, pid, ticks) == []


async def test_a_failing_step_undoes_the_earlier_ones(
    config: VmConfig, backend: FirecrackerBackend, tmp_path: Path
) -> None:
    async def explode(vm: Vm) -> None:
        raise RuntimeError("boom")

    vm = Vm(config, backend, root=tmp_path / "vms", steps=[*boot_steps(config), Step("explode", explode)])
    with pytest.raises(VmStartError) as info:
        await vm.start()
    assert (info.value.step, info.value.reason) == ("explode", "boom")
    assert vm.state is VmState.ERROR and vm.reason == "explode: boom"
    vmm, pid, ticks = handle(vm)
    assert leftovers(vm, vmm, pid, ticks) == []
    assert list((tmp_path / "vms").iterdir()) == []
    await vm.stop()
    assert state_of(vm) is VmState.STOPPED


async def test_a_configuration_firecracker_rejects(
    config: VmConfig, backend: FirecrackerBackend, tmp_path: Path
) -> None:
    # Passes our validation (a 64-bit ELF); Firecracker refuses its entry point when it starts the VM.
    low = write_halting_kernel(tmp_path / "low.elf", load_address=0x1000)
    bad = VmConfig(low, config.rootfs, memory_mib=64, wait_ready=False)
    vm = Vm(bad, backend, root=tmp_path / "vms")
    with pytest.raises(VmStartError) as info:
        await vm.start()
    message = str(info.value)
    assert info.value.step == "start VMM"
    # Firecracker exits refusing its configuration file; its logged reason is the error, verbatim.
    assert "firecracker rejected the configuration: " in message
    assert message.endswith("Kernel Loader: Invalid entry address"), message
    assert "\n" not in message
    assert vm.state is VmState.ERROR
    vmm, pid, ticks = handle(vm)
    assert leftovers(vm, vmm, pid, ticks) == []


async def test_pinned_api_socket(config: VmConfig, firecracker_bin: Path, tmp_path: Path) -> None:
    socket = tmp_path / "fc.sock"
    backend = FirecrackerBackend(firecracker_bin, api_socket=socket)
    require_available(backend.capabilities())
    vm = Vm(config, backend, root=tmp_path / "vms", stop_grace=0)
    await vm.start()
    vmm, pid, ticks = handle(vm)
    assert vmm.api_socket == socket and socket.is_socket()
    await vm.stop()
    assert not socket.exists()
    assert leftovers(vm, vmm, pid, ticks) == []


async def test_bad_config_fails_validation_before_anything_exists(
    config: VmConfig, backend: FirecrackerBackend, tmp_path: Path
) -> None:
    bad = VmConfig(tmp_path / "missing-kernel", config.rootfs, vcpus=0, wait_ready=False)
    vm = Vm(bad, backend, root=tmp_path / "vms")
    with pytest.raises(VmStartError) as info:
        await vm.start()
    assert info.value.step == "validate"
    assert info.value.reason.splitlines() == [
        "vcpus must be between 1 and 32, got 0",
        f"kernel {tmp_path / 'missing-kernel'} does not exist",
    ]
    assert vm.state is VmState.ERROR and vm.vmm is None
    assert not (tmp_path / "vms").exists()
