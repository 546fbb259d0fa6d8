"""The real kernel on the real Firecracker: configuration accepted, InstanceStart, the kernel's own
console output, and the VM's end detected.

On kvm_pvm hosts the guest dies ~10 s in with KVM_EXIT_INTERNAL_ERROR; on real KVM hosts it boots on.
Neither is required: if the guest is still running when the exit test comes, the test kills
firecracker itself, which is the same "unexpected exit" from the VM's point of view.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from firecracker_helpers import process_gone, require_available, wait_until

from clawpot.node import orphans
from clawpot.vm import procfs
from clawpot.vm.config import VmConfig
from clawpot.vm.errors import VmStartError
from clawpot.vm.handle import Vm
from clawpot.vm.state import VmState
from clawpot.vmm.cgroups import VmCgroup
from clawpot.vmm.firecracker import models
from clawpot.vmm.firecracker.backend import FirecrackerBackend
from clawpot.vmm.firecracker.handle import FirecrackerVmm

pytestmark = pytest.mark.asyncio(loop_scope="module")

# The guest prints its command line in its first second; under a loaded 2-core host give it room.
CONSOLE_DEADLINE = 120.0
# How long the exit test lets a natural guest exit happen before causing one.
NATURAL_EXIT_WAIT = 60.0


@dataclass
class Booted:
    vm: Vm
    vmm: FirecrackerVmm
    pid: int
    ticks: int | None
    instance: models.InstanceInfo
    machine: models.MachineConfigurationInfo
    config: models.VmConfigInfo
    gone_at: list[float]  # when /proc stopped showing the process (filled by a watcher thread)
    adoption: dict[str, object]  # what adoption and orphan cleanup see of the process, read at start


def watch_pid(pid: int, ticks: int | None, gone_at: list[float]) -> None:
    """Independent of the VM's own watcher: note when the process disappears from /proc."""

    def poll() -> None:
        while not process_gone(pid, ticks) and procfs.is_alive(pid, ticks):
            time.sleep(0.005)
        gone_at.append(time.time())

    threading.Thread(target=poll, daemon=True).start()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def booted(
    installed_assets: Any, firecracker_bin: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Booted]:
    backend = FirecrackerBackend(firecracker_bin)
    require_available(backend.capabilities())
    config = VmConfig(
        installed_assets.kernel, installed_assets.rootfs, vcpus=1, memory_mib=256, wait_ready=False
    )
    vm = Vm(config, backend, root=tmp_path_factory.mktemp("vms"), stop_grace=1.0)
    try:
        await vm.start()
        vmm = vm.vmm
        assert isinstance(vmm, FirecrackerVmm) and vmm.pid is not None
        ticks = procfs.start_ticks(vmm.pid)
        gone_at: list[float] = []
        watch_pid(vmm.pid, ticks, gone_at)
        # Read right after InstanceStart was acknowledged, before the guest can have died.
        instance = await vmm.client.instance_info()
        machine = await vmm.client.machine_config()
        config = await vmm.client.vm_config()
        adoption = {
            "command": procfs.command_name(vmm.pid),
            "cmdline_names_vm_dir": str(vmm.vm_dir).encode() in procfs_cmdline(vmm.pid),
            "in_vm_cgroup": vmm.pid in VmCgroup(vmm.vm_dir.name).pids(),
            "found_by_orphan_cleanup": vmm.pid in orphans._vmm_pids_using(vmm.vm_dir),
        }
        yield Booted(vm, vmm, vmm.pid, ticks, instance, machine, config, gone_at, adoption)
    finally:
        await vm.stop(grace=0)


async def test_configuration_accepted_and_instance_started(booted: Booted) -> None:
    assert [t.target for t in booted.vm.lifecycle.history][:2] == [VmState.STARTING, VmState.RUNNING]
    assert booted.instance.state is models.InstanceState.RUNNING
    assert (booted.machine.vcpu_count, booted.machine.mem_size_mib) == (1, 256)
    # Firecracker holds every resource of the spec, as given: the VM is configured from a file, so its
    # own account of the configuration (GET /vm/config) is the witness, not per-resource PUT log lines.
    spec, config = booted.vm.spec, booted.config
    assert spec is not None
    assert config.boot_source is not None
    # Jailed (the default) firecracker sees its chroot: every file is linked at its root under its name
    # (the kernel and base image too: hard links, never copies). Without a jail the VM's own files are
    # named relative to its directory, where firecracker runs. Either way a snapshot restored elsewhere
    # reopens its own copies.
    vmm = booted.vmm
    assert vmm.jail is not None
    root = vmm.jail.root
    assert config.boot_source.boot_args == spec.boot_args
    assert config.boot_source.kernel_image_path == Path(spec.kernel.name)
    assert (root / config.boot_source.kernel_image_path).samefile(spec.kernel)
    assert [(d.drive_id, d.path_on_host, d.is_read_only) for d in config.drives] == [
        (d.drive_id, Path(d.path.name), d.read_only) for d in spec.drives
    ]
    for on_host, drive in zip(config.drives, spec.drives, strict=True):
        assert (root / on_host.path_on_host).samefile(drive.path)
    assert [d.drive_id for d in config.drives] == ["rootfs", "scratch"]
    assert config.vsock is not None and config.vsock.guest_cid == 3
    assert (root / config.vsock.uds_path).samefile(booted.vmm.vsock_path)  # the VM directory's link
    log = booted.vmm.log_path.read_text()
    assert "Successfully started microvm that was configured from one single json" in log
    assert ":ERROR]" not in log.split("Successfully started microvm")[0]
    assert "Status code: 400" not in log


async def test_serial_console_shows_the_kernel_and_the_exact_boot_args(booted: Booted) -> None:
    serial = booted.vmm.serial_log
    spec = booted.vm.spec
    assert spec is not None
    expected = f"Command line: {spec.boot_args}"

    def printed() -> bool:
        # The console file is written as the guest prints: wait for the whole command line (its newline).
        text = serial.read_text(errors="replace")
        start = text.find(expected)
        return "Linux version" in text and start >= 0 and "\n" in text[start:]

    await asyncio.to_thread(wait_until, printed, CONSOLE_DEADLINE, 0.1)
    text = serial.read_text(errors="replace")
    assert "Linux version" in text, text[-2000:]
    assert expected in text, text[-2000:]
    # Firecracker only appends its virtio-mmio devices; our arguments come first and intact.
    command_line = next(line for line in text.splitlines() if "Command line: " in line)
    print(f"\n{command_line.strip()}")
    assert "clawpot.overlay=/dev/vdb" in command_line and "virtio_mmio.device=" in command_line


async def test_the_tracked_pid_is_the_jailed_firecrackers_own(booted: Booted) -> None:
    # What a restarted server adopts (the PID recorded with its start time) is firecracker itself, not
    # the jailer that started it; orphan cleanup finds it through its cgroup (its command line names
    # only paths inside its chroot). Read right after the start (the guest may end the VM any time).
    assert booted.adoption == {
        "command": "firecracker",
        "cmdline_names_vm_dir": False,
        "in_vm_cgroup": True,
        "found_by_orphan_cleanup": True,
    }


async def test_unexpected_exit_moves_the_vm_to_error_and_reaps(booted: Booted) -> None:
    vm = booted.vm
    caused = False
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(NATURAL_EXIT_WAIT):
            await vm.wait_for(VmState.ERROR)
    if vm.state is VmState.RUNNING:
        # The guest booted on (a real KVM host): make the exit happen.
        caused = True
        booted.vmm.process.send_signal(signal.SIGKILL)
        async with asyncio.timeout(30):
            await vm.wait_for(VmState.ERROR)
    assert vm.state is VmState.ERROR
    reason = vm.reason
    assert reason.startswith("firecracker exited with code") or reason.startswith("firecracker killed by")
    if caused:
        assert reason == "firecracker killed by SIGKILL"
    error = vm.lifecycle.history[-1]
    assert (error.source, error.target, error.reason) == (VmState.RUNNING, VmState.ERROR, reason)
    assert process_gone(booted.pid, booted.ticks), "firecracker must be reaped, not left a zombie"
    # Under the jailer nothing of it is left once it is reaped: no chroot, no cgroup, no socket.
    vmm = booted.vmm
    assert vmm.jail is not None and not vmm.jail.base.exists()
    assert not VmCgroup(vmm.vm_dir.name).exists()
    assert not vmm.api_socket.exists() and not vmm.api_socket.is_symlink()
    assert not vmm.vsock_path.exists() and not vmm.vsock_path.is_symlink()
    assert "Received KVM_EXIT_INTERNAL_ERROR" in vmm.log_path.read_text() or caused
    await asyncio.to_thread(wait_until, lambda: bool(booted.gone_at), 5)
    delay = error.at - booted.gone_at[0] if booted.gone_at else float("nan")
    print(f"\nexit {'caused by the test' if caused else 'by the guest'}: {reason}")
    print(f"Error recorded {delay:+.3f}s after the process left /proc (negative: before the poller saw it)")


async def test_stop_after_the_error_removes_everything(booted: Booted) -> None:
    vm = booted.vm
    directory = vm.directory
    assert directory is not None and directory.exists()
    assert (directory.path / "serial.log").exists()  # kept while in Error, for inspection
    await vm.stop()
    assert vm.state is VmState.STOPPED
    assert [t.target for t in vm.lifecycle.history][-2:] == [VmState.STOPPING, VmState.STOPPED]
    assert not directory.path.exists()
    assert not booted.vmm.api_socket.exists() and not booted.vmm.vsock_path.exists()


async def test_waiting_for_the_agent_ends_either_ready_or_with_the_reason(
    installed_assets: Any, firecracker_bin: Path, tmp_path: Path
) -> None:
    # On a real KVM host the agent answers over Firecracker's hybrid vsock; here the guest dies first
    # and readiness must end with the VMM's exit reason and the guest's last console lines, not hang.
    config = VmConfig(installed_assets.kernel, installed_assets.rootfs, wait_ready=True, ready_timeout=120)
    vm = Vm(config, FirecrackerBackend(firecracker_bin), root=tmp_path / "vms", stop_grace=1.0)
    try:
        await vm.start()
    except VmStartError as exc:
        print(f"\n{exc}")
        assert exc.step == "wait for agent"
        assert vm.state is VmState.ERROR
        assert str(exc).count("\n") >= 1 and "last lines of the guest console:" in str(exc)
        assert not (tmp_path / "vms" / vm.id).exists()
    else:
        assert vm.state is VmState.RUNNING and vm.agent is not None
        result = await vm.agent.run(["uname", "-r"])
        assert result.status.exit_code == 0
    finally:
        await vm.stop()
    assert vm.lifecycle.history[-1].target is VmState.STOPPED


def procfs_cmdline(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes()
