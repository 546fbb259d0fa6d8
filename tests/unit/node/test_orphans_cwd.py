"""A VMM left behind is found by its VM directory even when its command line does not name it: an
unprivileged QEMU gets its files as fds and runs in (then chrooted inside) the VM directory.

A real process stands in for the VMM: ``sleep`` copied under a VMM's name (the finder only looks at
processes whose program is a VMM), started in the VM directory.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from clawpot.node import orphans


def test_a_vmm_working_in_the_vm_directory_is_found_and_no_other(tmp_path: Path) -> None:
    fake_qemu = tmp_path / "qemu-system-x86_64"
    shutil.copy(shutil.which("sleep") or "/bin/sleep", fake_qemu)
    vm_dir, other_dir = tmp_path / "vms" / "a1", tmp_path / "vms" / "a2"
    vm_dir.mkdir(parents=True)
    other_dir.mkdir()
    ours = subprocess.Popen([str(fake_qemu), "600"], cwd=vm_dir)
    theirs = subprocess.Popen([str(fake_qemu), "600"], cwd=other_dir)
    try:
        assert orphans._vmm_pids_using(vm_dir) == {ours.pid}
        assert orphans._vmm_pids_using(other_dir) == {theirs.pid}
    finally:
        for proc in (ours, theirs):
            proc.kill()
            proc.wait()
