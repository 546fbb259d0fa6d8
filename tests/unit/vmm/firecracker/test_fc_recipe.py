"""Firecracker's boot recipe can be edited the way the jailer will need: swap the launch step, add one.

The stand-in: unit tests run without KVM, so the swapped-in launch runs a wrapper script that plays
firecracker (it records its argv, logs firecracker's "started" line and sleeps). Everything around it is
the real handle: configuration file, console FIFO, spawn helper, log follower, undo stack.
tests/integration/test_firecracker_recipe.py runs the same edit with the real firecracker behind the
wrapper.
"""

from __future__ import annotations

import logging
import os
import shlex
from pathlib import Path

import pytest

from clawpot.vm import procfs
from clawpot.vmm.firecracker import boot
from clawpot.vmm.firecracker.boot import FIRECRACKER_BOOT, JAILED_BOOT, JAILED_RESTORE
from clawpot.vmm.firecracker.handle import STARTED_LINE, FirecrackerVmm
from clawpot.vmm.spec import Drive, VmSpec
from clawpot.vmm.steps import Recipe, Step

SPAWN_WRAPPED = "spawn firecracker through a wrapper"
PREPARE_JAIL = "prepare a stand-in jail"


def jailed_recipe(wrapper: Path, jail: Path) -> Recipe[FirecrackerVmm]:
    """What a jailer variant looks like: one launch step swapped, one step added before it."""

    async def spawn_wrapped(vmm: FirecrackerVmm) -> None:
        vmm.process.launch([str(wrapper), *vmm.process.argv()])

    async def prepare_jail(vmm: FirecrackerVmm) -> None:
        os.mkdir(jail)
        os.link(vmm.files.config, jail / "firecracker.json")  # type: ignore[arg-type]

    async def remove_jail(vmm: FirecrackerVmm) -> None:
        os.unlink(jail / "firecracker.json")
        os.rmdir(jail)

    return FIRECRACKER_BOOT.replace(
        boot.SPAWN, Step(SPAWN_WRAPPED, spawn_wrapped, undo=boot.kill)
    ).insert_before(SPAWN_WRAPPED, Step(PREPARE_JAIL, prepare_jail, undo=remove_jail))


def stand_in(tmp_path: Path) -> Path:
    """A firecracker that only logs that it started: records its argv, then idles."""
    script = tmp_path / "stand-in-firecracker"
    line = f"2026-01-01T00:00:00.000000000 [stand-in:main:INFO] {STARTED_LINE.decode()}"
    script.write_text(
        "#!/bin/sh\n"
        f"printf '%s\\n' \"$@\" > {shlex.quote(str(tmp_path / 'argv'))}\n"
        'log=""\n'
        'while [ $# -gt 0 ]; do [ "$1" = --log-path ] && log="$2"; shift; done\n'
        f'echo {shlex.quote(line)} >> "$log"\n'
        "exec sleep 600\n"
    )
    script.chmod(0o755)
    return script


def make_vmm(tmp_path: Path, recipe: Recipe[FirecrackerVmm]) -> FirecrackerVmm:
    vm_dir = tmp_path / "vm"
    vm_dir.mkdir()
    spec = VmSpec(
        kernel=tmp_path / "vmlinux",
        boot_args="console=ttyS0",
        drives=(Drive("rootfs", tmp_path / "rootfs.ext4", read_only=True),),
    )
    return FirecrackerVmm(Path("/opt/firecracker"), spec, vm_dir, api_timeout=5, recipe=recipe)


def steps_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.step for r in caplog.records if r.name == "clawpot.vmm.steps" and hasattr(r, "step")]


def test_the_default_recipe_reads_as_the_boot() -> None:
    assert FIRECRACKER_BOOT.names == (
        "write the configuration",
        "prepare files",
        "create the cgroup",
        "spawn firecracker",
        "wait for the microVM to start",
    )
    # The real jailer (the default of clawpot-server and clawpot-driver) is the same kind of edit.
    assert JAILED_BOOT.names == (
        "write the configuration",
        "prepare the jail",
        "prepare files",
        "spawn firecracker under the jailer",
        "wait for the microVM to start",
    )
    assert JAILED_RESTORE.names == (
        "verify the snapshot",
        "copy the writable layer",
        "prepare the jail",
        "prepare files",
        "spawn firecracker under the jailer",
        "wait for the API",
        "load the snapshot",
        "resume the guest",
    )
    assert JAILED_BOOT[boot.PREPARE_JAIL].undo is not None and JAILED_BOOT[boot.SPAWN_JAILED].undo is not None


async def test_swapped_launch_and_added_step_boot_in_order(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    recipe = jailed_recipe(stand_in(tmp_path), tmp_path / "jail")
    assert recipe.names == (
        "write the configuration",
        "prepare files",
        "create the cgroup",
        PREPARE_JAIL,
        SPAWN_WRAPPED,
        "wait for the microVM to start",
    )
    assert "spawn firecracker" in FIRECRACKER_BOOT  # the default is untouched
    vmm = make_vmm(tmp_path, recipe)
    with caplog.at_level(logging.DEBUG, logger="clawpot.vmm.steps"):
        await vmm.start()
    try:
        assert steps_logged(caplog) == list(recipe.names)
        assert sorted(open_files_in(vmm.vm_dir)) == [
            str(vmm.vm_dir / n) for n in ("metrics.fifo", "serial.fifo", "serial.log")
        ]
        # The wrapper got firecracker's whole command line, configuration file included.
        assert (tmp_path / "argv").read_text().splitlines() == vmm.process.argv()
        assert (tmp_path / "jail" / "firecracker.json").samefile(vmm.vm_dir / "firecracker.json")
        assert vmm.pid is not None and procfs.is_alive(vmm.pid)
    finally:
        info = await vmm.kill()
    assert info.reason.startswith("firecracker killed by SIGKILL")


async def test_a_later_failure_undoes_the_variant_in_reverse(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def explode(vmm: FirecrackerVmm) -> None:
        raise RuntimeError("boom")

    recipe = jailed_recipe(stand_in(tmp_path), tmp_path / "jail").append(Step("explode", explode))
    vmm = make_vmm(tmp_path, recipe)
    with (
        caplog.at_level(logging.DEBUG, logger="clawpot.vmm.steps"),
        pytest.raises(RuntimeError, match="boom"),
    ):
        await vmm.start()
    assert steps_logged(caplog) == [
        *recipe.names,  # the last one, "explode", logged as failed
        f"undo {SPAWN_WRAPPED}",
        f"undo {PREPARE_JAIL}",
        "undo create the cgroup",
        "undo prepare files",
    ]
    pid = vmm.pid
    assert pid is not None and procfs.start_ticks(pid) is None  # killed and reaped
    assert vmm.exit_info is not None and "SIGKILL" in vmm.exit_info.reason
    assert not (tmp_path / "jail").exists()
    assert not vmm.api_socket.exists() and not vmm.vsock_path.exists()
    assert open_files_in(vmm.vm_dir) == []  # the console FIFO and file are closed


def open_files_in(directory: Path) -> list[str]:
    """What this process still holds open inside ``directory``."""
    held = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(f"{directory}/"):
            held.append(target)
    return held
