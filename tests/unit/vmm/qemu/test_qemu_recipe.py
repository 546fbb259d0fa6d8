"""QEMU's boot recipe: its steps in order, and what a failure at each late step takes back.

No QEMU is needed for these failures: a binary that does not exist, and a launch swapped for ``sleep``
(a process that never answers QMP; the real QEMU's starts are in tests/integration/test_qemu_process.py).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from clawpot.vm import procfs
from clawpot.vmm.base import VmmConfigError, VmmStartError
from clawpot.vmm.cgroups import VmCgroup
from clawpot.vmm.qemu import boot
from clawpot.vmm.qemu.backend import QemuBackend
from clawpot.vmm.qemu.boot import QEMU_BOOT
from clawpot.vmm.qemu.cmdline import Accel
from clawpot.vmm.qemu.process import QemuProcess
from clawpot.vmm.spec import Drive, VmSpec
from clawpot.vmm.steps import Recipe, Step


def spec(tmp_path: Path) -> VmSpec:
    kernel, rootfs = tmp_path / "vmlinux", tmp_path / "rootfs.ext4"
    kernel.write_bytes(b"\0")
    rootfs.write_bytes(b"\0" * 4096)
    return VmSpec(kernel, "console=ttyS0", (Drive("root", rootfs, read_only=True),))


def steps_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.step for r in caplog.records if r.name == "clawpot.vmm.steps" and hasattr(r, "step")]


def test_the_default_recipe_reads_as_the_boot() -> None:
    assert QEMU_BOOT.names == (
        "validate",
        "choose the accelerator",
        "prepare files",
        "build the command line",
        "create the cgroup",
        "spawn qemu",
        "wait until QMP says running",
    )


async def test_a_binary_that_cannot_run_leaves_no_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    vm_dir = tmp_path / "vm"
    process = QemuProcess(spec(tmp_path), vm_dir, accel=Accel.TCG, binary=str(tmp_path / "no-qemu"))
    with (
        caplog.at_level(logging.DEBUG, logger="clawpot.vmm.steps"),
        pytest.raises(VmmStartError, match=r"cannot run .*no-qemu: No such file or directory"),
    ):
        await process.start()
    assert steps_logged(caplog) == [*QEMU_BOOT.names[:6], "undo create the cgroup", "undo prepare files"]
    assert list(vm_dir.iterdir()) == []
    assert not VmCgroup(vm_dir.name).exists()
    assert process.pid is None


async def test_validation_fails_before_anything_exists(tmp_path: Path) -> None:
    bad = VmSpec(tmp_path / "missing", "console=ttyS0", ())
    process = QemuProcess(bad, tmp_path / "vm", accel=Accel.TCG)
    with pytest.raises(VmmConfigError, match="kernel not found"):
        await process.start()
    assert not (tmp_path / "vm").exists()


async def test_a_launch_that_never_runs_is_killed_and_its_files_removed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sleep = shutil.which("sleep")
    assert sleep is not None

    async def launch_sleep(qemu: QemuProcess) -> None:
        qemu.launch([sleep, "600"])

    recipe: Recipe[QemuProcess] = QEMU_BOOT.replace(
        boot.SPAWN, Step("spawn a sleeper", launch_sleep, boot.kill)
    )
    vm_dir = tmp_path / "vm"
    process = QemuProcess(spec(tmp_path), vm_dir, accel=Accel.TCG, start_timeout=0.3, recipe=recipe)
    with (
        caplog.at_level(logging.DEBUG, logger="clawpot.vmm.steps"),
        pytest.raises(VmmStartError, match="QEMU not running after 0 s: QMP did not answer"),
    ):
        await process.start()
    assert steps_logged(caplog) == [
        *recipe.names,
        "undo spawn a sleeper",
        "undo create the cgroup",
        "undo prepare files",
    ]
    assert process.pid is not None and procfs.start_ticks(process.pid) is None  # killed and reaped
    assert process.exit_info is not None and process.exit_info.reason == "qemu killed by SIGKILL"
    assert list(vm_dir.iterdir()) == []
    assert not VmCgroup(vm_dir.name).exists()
    with pytest.raises(VmmStartError, match="already started"):
        await process.start()


def test_a_backend_hands_its_recipe_to_every_vm(tmp_path: Path) -> None:
    variant = QEMU_BOOT.remove(boot.CHOOSE_ACCEL)
    backend = QemuBackend(shutil.which("true") or "/bin/true", accel=Accel.TCG, vsock=False, recipe=variant)
    assert backend.prepare(spec(tmp_path), tmp_path / "vm").recipe is variant
    assert (
        QemuBackend(shutil.which("true") or "/bin/true").prepare(spec(tmp_path), tmp_path / "v2").recipe
        is QEMU_BOOT
    )
