"""A jailer-shaped edit of the Firecracker boot recipe, on the real firecracker: the launch step swapped
for one that runs firecracker through a wrapper command, and a step added before it (the real jailer,
``boot.JAILED_BOOT``, is the default and runs in every other Firecracker test).

The guest is the halting kernel (firecracker_helpers): a real VM that stays in Running on any KVM host.
"""

from __future__ import annotations

import logging
import shlex
from pathlib import Path

import pytest
from firecracker_helpers import require_available, write_blank_rootfs, write_halting_kernel

from clawpot.vm import procfs
from clawpot.vmm.firecracker import boot
from clawpot.vmm.firecracker.backend import FirecrackerBackend
from clawpot.vmm.firecracker.boot import FIRECRACKER_BOOT
from clawpot.vmm.firecracker.handle import FirecrackerVmm
from clawpot.vmm.spec import Drive, VmSpec
from clawpot.vmm.steps import Step

SPAWN_WRAPPED = "spawn firecracker through a wrapper"
PREPARE = "prepare the wrapper's directory"


def wrapper(tmp_path: Path) -> Path:
    """Records its argv, then runs it: where the jailer would chroot and drop privileges first."""
    script = tmp_path / "wrap"
    script.write_text(
        f'#!/bin/sh\nprintf \'%s\\n\' "$@" > {shlex.quote(str(tmp_path / "wrapped" / "argv"))}\nexec "$@"\n'
    )
    script.chmod(0o755)
    return script


async def test_real_firecracker_through_a_swapped_launch_step(
    firecracker_bin: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    require_available(FirecrackerBackend(firecracker_bin).capabilities())
    wrap = wrapper(tmp_path)
    events: list[str] = []

    async def spawn_wrapped(vmm: FirecrackerVmm) -> None:
        events.append("spawn wrapped")
        vmm.process.launch([str(wrap), *vmm.process.argv()])

    async def prepare(vmm: FirecrackerVmm) -> None:
        events.append("prepare")
        (tmp_path / "wrapped").mkdir()

    async def unprepare(vmm: FirecrackerVmm) -> None:
        events.append("unprepare")
        for path in (tmp_path / "wrapped").iterdir():
            path.unlink()
        (tmp_path / "wrapped").rmdir()

    async def explode(vmm: FirecrackerVmm) -> None:
        assert vmm.pid is not None and procfs.is_alive(vmm.pid)
        info = await vmm.client.instance_info()  # the API answers: firecracker runs the VM
        events.append(f"instance {info.state}")
        # It came up through the wrapper, which got firecracker's whole command line.
        assert (tmp_path / "wrapped" / "argv").read_text().splitlines() == vmm.process.argv()
        raise RuntimeError("boom after the start")

    recipe = (
        FIRECRACKER_BOOT.replace(boot.SPAWN, Step(SPAWN_WRAPPED, spawn_wrapped, undo=boot.kill))
        .insert_before(SPAWN_WRAPPED, Step(PREPARE, prepare, undo=unprepare))
        .append(Step("check, then fail", explode))
    )
    spec = VmSpec(
        kernel=write_halting_kernel(tmp_path / "halt.elf"),
        boot_args="console=ttyS0",
        drives=(Drive("rootfs", write_blank_rootfs(tmp_path / "blank.img"), read_only=True),),
        memory_mib=128,
        agent_channel=False,
    )
    vm_dir = tmp_path / "vm"
    vm_dir.mkdir()
    vmm = FirecrackerVmm(firecracker_bin, spec, vm_dir, recipe=recipe)
    with (
        caplog.at_level(logging.DEBUG, logger="clawpot.vmm.steps"),
        pytest.raises(RuntimeError, match="boom"),
    ):
        await vmm.start()

    assert events == ["prepare", "spawn wrapped", "instance Running", "unprepare"]
    logged = [r.step for r in caplog.records if r.name == "clawpot.vmm.steps" and hasattr(r, "step")]
    assert logged == [
        "write the configuration",
        "prepare files",
        "create the cgroup",
        PREPARE,
        SPAWN_WRAPPED,
        "wait for the microVM to start",
        "check, then fail",
        f"undo {SPAWN_WRAPPED}",
        f"undo {PREPARE}",
        "undo create the cgroup",
        "undo prepare files",
    ]
    # The wrapper exec'd firecracker: the process we spawned and killed was firecracker itself.
    assert vmm.exit_info is not None and vmm.exit_info.reason.startswith("firecracker killed by SIGKILL")
    assert vmm.pid is not None and procfs.start_ticks(vmm.pid) is None
    assert not vmm.api_socket.exists()
