"""Where a VM's jail is and what the jailer is told (clawpot.vmm.firecracker.jail); the real jailer runs
in every Firecracker integration test (tests/integration/test_firecracker_boot.py and others)."""

from __future__ import annotations

from pathlib import Path

import pytest

from clawpot.vmm.account import VmmAccount
from clawpot.vmm.base import VmmStartError
from clawpot.vmm.firecracker.jail import Jail, _check_readable

ACCOUNT = VmmAccount("clawpot-vmm", 999, 995)


def jail(tmp_path: Path) -> Jail:
    return Jail.for_vm(
        Path("/opt/jailer"), Path("/opt/fc/firecracker"), tmp_path / "vms" / "ab12cd34", ACCOUNT
    )


def test_the_chroot_is_inside_the_vm_directory(tmp_path: Path) -> None:
    j = jail(tmp_path)
    vm_dir = tmp_path / "vms" / "ab12cd34"
    assert j.base == vm_dir / "jail"
    assert j.root == vm_dir / "jail" / "firecracker" / "ab12cd34" / "root"
    assert j.pid_file == j.root / "firecracker.pid"
    # Every file is linked at the root under its own name: firecracker names it so.
    assert j.inside(vm_dir / "scratch.ext4") == Path("/scratch.ext4")
    assert j.inside(Path("/var/lib/clawpot/assets/vmlinux")) == Path("/vmlinux")


def test_the_jailer_gets_the_account_a_pid_namespace_and_firecracker_its_own_options(tmp_path: Path) -> None:
    j = jail(tmp_path)
    argv = j.argv(["--cgroup-version", "1"], ["--api-sock", "/firecracker.sock"])
    assert argv == [
        "/opt/jailer",
        "--id", "ab12cd34",
        "--exec-file", "/opt/fc/firecracker",
        "--uid", "999",
        "--gid", "995",
        "--chroot-base-dir", str(j.base),
        "--new-pid-ns",
        "--cgroup-version", "1",
        "--",
        "--api-sock", "/firecracker.sock",
    ]  # fmt: skip


def test_a_shared_file_the_vmm_account_cannot_read_is_refused(tmp_path: Path) -> None:
    private = tmp_path / "rootfs.ext4"
    private.write_bytes(b"x")
    private.chmod(0o600)
    with pytest.raises(VmmStartError, match=r"rootfs.ext4 is not readable by clawpot-vmm \(mode 600\)"):
        _check_readable(private, ACCOUNT)
    private.chmod(0o644)
    _check_readable(private, ACCOUNT)
