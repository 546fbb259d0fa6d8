"""An unprivileged QEMU's pieces without QEMU: the setpriv prefix, /dev/kvm access, the argv naming passed
fds instead of paths, the VM directory and snapshot RAM file handed over. That a real QEMU runs so
(uid, seccomp, chroot) is checked for every VM the integration suite starts (tests/support/vmm_audit.py).
"""

from __future__ import annotations

import dataclasses
import os
import stat
from pathlib import Path

import pytest

from clawpot.vmm.account import VmmAccount, vmm_account
from clawpot.vmm.base import VmmConfigError, VmmStartError
from clawpot.vmm.qemu import confine
from clawpot.vmm.qemu.cmdline import Accel, PassedFds, QemuFiles, RamBacking, build_command
from clawpot.vmm.spec import Drive, NetworkInterface, VmSpec

ACCOUNT = VmmAccount("clawpot-vmm", 999, 995)


def test_the_launcher_keeps_only_the_chroot_capability() -> None:
    argv = confine.launcher(ACCOUNT, die_with_parent=False)
    assert argv[0] == "setpriv" and argv[-1] == "--"
    assert {"--reuid=999", "--regid=995", "--clear-groups", "--no-new-privs"} <= set(argv)
    for option in ("--inh-caps", "--ambient-caps", "--bounding-set"):
        assert f"{option}=-all,+sys_chroot" in argv
    assert not any(arg.startswith("--pdeathsig") for arg in argv)
    with_groups = confine.launcher(ACCOUNT, groups=(107,), die_with_parent=True)
    assert "--groups=107" in with_groups and "--clear-groups" not in with_groups
    assert "--pdeathsig=SIGKILL" in with_groups


@pytest.mark.parametrize(
    ("mode", "groups"),
    [(0o666, ()), (0o660, (4242,)), (0o600, None)],
)
def test_kvm_access_comes_from_the_devices_group(
    tmp_path: Path, mode: int, groups: tuple[int, ...] | None
) -> None:
    device = tmp_path / "kvm"
    device.touch()
    os.chown(device, 0, 4242)
    device.chmod(mode)
    assert confine.kvm_groups(Accel.TCG, ACCOUNT, device) == ()  # TCG never opens it
    if groups is None:
        with pytest.raises(VmmConfigError, match=r"cannot open .*kvm \(mode 0600.*make it 0660 root:kvm"):
            confine.kvm_groups(Accel.KVM, ACCOUNT, device)
    else:
        assert confine.kvm_groups(Accel.KVM, ACCOUNT, device) == groups


def test_the_argv_names_fds_not_paths(tmp_path: Path) -> None:
    spec = VmSpec(
        kernel=tmp_path / "vmlinux",
        boot_args="console=ttyS0",
        drives=(Drive("root", tmp_path / "rootfs.ext4", True), Drive("scratch", tmp_path / "scratch", False)),
        network_interfaces=(NetworkInterface("cp-tap0", "02:00:00:00:00:01"),),
    )
    files = QemuFiles.in_dir(tmp_path / "vm")
    fds = PassedFds(
        qmp=10,
        agent=11,
        drives={"root": (12,), "scratch": (13, 14)},
        taps=(15,),
        vhost_vsock=None,
        kernel=16,
        memory=17,
        chroot="chroot",
    )
    argv = build_command(spec, files, Accel.TCG, ram=RamBacking(tmp_path / "memory"), fds=fds)
    joined = " ".join(argv)
    assert str(tmp_path) not in joined  # nothing is opened by path: no directory above the VM matters
    assert "-kernel /proc/self/fd/16" in joined and "mem-path=/proc/self/fd/17,share=off" in joined
    assert "-add-fd fd=12,set=1" in joined and "file=/dev/fdset/1," in joined
    assert "-add-fd fd=13,set=2 -add-fd fd=14,set=2" in joined and "file=/dev/fdset/2," in joined
    assert "tap,id=net0,fd=15" in joined and "ifname" not in joined
    assert "socket,id=qmp,fd=10,server=on,wait=off" in joined and "-qmp" not in argv
    assert "socket,id=agent,fd=11,server=on" in joined
    assert "pipe,id=console,path=console" in joined  # relative to the VM directory, QEMU's cwd
    assert argv[argv.index("-chroot") + 1] == "chroot"
    assert "elevateprivileges=deny" in argv[argv.index("-sandbox") + 1]
    vsock = build_command(spec, files, Accel.TCG, vsock_cid=7, fds=dataclasses.replace(fds, vhost_vsock=18))
    assert "vhost-vsock-device,guest-cid=7,vhostfd=18" in vsock


def test_the_vm_directory_is_searchable_by_the_account_only(tmp_path: Path) -> None:
    account = vmm_account()
    vm_dir = tmp_path / "vm"
    vm_dir.mkdir(mode=0o700)
    files = QemuFiles.in_dir(vm_dir)
    for fifo in files.console_fifos:
        os.mkfifo(fifo, 0o600)
    confine.prepare_vm_dir(vm_dir, files, account)
    st = vm_dir.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, account.gid, 0o710)
    assert all(fifo.stat().st_uid == account.uid for fifo in files.console_fifos)
    root = (vm_dir / confine.CHROOT_NAME).stat()
    assert (root.st_uid, stat.S_IMODE(root.st_mode)) == (0, 0o555)
    confine.prepare_vm_dir(vm_dir, files, account)  # again: the same empty chroot is fine
    (vm_dir / confine.CHROOT_NAME).chmod(0o755)
    (vm_dir / confine.CHROOT_NAME / "planted").touch()
    with pytest.raises(VmmStartError, match="not an empty directory"):
        confine.prepare_vm_dir(vm_dir, files, account)


def test_a_snapshot_memory_file_is_granted_once(tmp_path: Path) -> None:
    account = vmm_account()
    memory = tmp_path / "memory"
    memory.write_bytes(b"\0" * 4096)
    memory.chmod(0o400)
    confine.grant_snapshot_memory(memory, account)
    first = memory.stat()
    assert (first.st_uid, first.st_gid, stat.S_IMODE(first.st_mode)) == (0, account.gid, 0o460)
    confine.grant_snapshot_memory(memory, account)
    assert memory.stat().st_ctime_ns == first.st_ctime_ns  # unchanged: no re-hash at the next restore
