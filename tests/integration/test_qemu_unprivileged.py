"""QEMU without root, and the per-VM disk bound (issue 13), with a real server, real QEMU/TCG VMs, the CLI.

One server in a namespace this module creates, one VM created with ``--disk 256``. Checked from /proc
(tests/support/vmm_audit.py, which also runs for every other QEMU VM of the suite): its QEMU runs as
``clawpot-vmm``, ``Seccomp: 2``, no new privileges, CAP_SYS_CHROOT alone, chrooted into an empty
directory, no directory open; the files it was handed stay root's. A guest filling its 256 MiB layer
gets ENOSPC inside, the host file stays within 256 MiB and the VM and server go on. A VM restored
from a snapshot of it keeps the 256 MiB (and is as confined); a bad ``--disk`` is INVALID_ARGUMENT and
leaves nothing behind. The audit itself is shown to fail on a QEMU that runs as root.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from server_harness import InstalledAssets, ServerProcess, server_in_namespace, wait_until
from support.vmm_audit import audit_qemu

from clawpot import limits
from clawpot.v1 import vm_pb2
from clawpot.vm.directory import SCRATCH_NAME
from clawpot.vmm.account import vmm_account
from clawpot.vmm.cgroups import VmCgroup
from clawpot.vmm.qemu.confine import CHROOT_NAME

DISK_MIB = 256
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, installed_assets: InstalledAssets
) -> Iterator[ServerProcess]:
    with server_in_namespace(tmp_path_factory.mktemp("unpriv"), installed_assets) as srv:
        yield srv


@pytest.fixture(scope="module")
def vm(server: ServerProcess) -> str:
    return server.create("--disk", str(DISK_MIB))  # create audits its QEMU (server_harness)


def _get(server: ServerProcess, vm_id: str) -> dict[str, object]:
    data: dict[str, object] = json.loads(server.cli_ok("get", vm_id))
    return data


def test_qemu_runs_as_the_vmm_account_chrooted_with_seccomp(server: ServerProcess, vm: str) -> None:
    pid = server.vmm_pids()[vm]
    audit = audit_qemu(pid)
    account = vmm_account()
    print(
        f"\nQEMU {pid}: uid {audit.uid} ({account.name}), Seccomp {audit.seccomp}, NoNewPrivs "
        f"{audit.no_new_privs}, CapEff {audit.cap_eff:#x}, root {audit.root}"
    )
    assert audit.uid == account.uid != 0 and audit.seccomp == 2
    vm_dir = server.data_dir / "vms" / vm
    assert audit.root == str(vm_dir / CHROOT_NAME)
    assert os.listdir(f"/proc/{pid}/root") == []  # nothing to read, write or chroot into
    # What QEMU was handed keeps its owner: root's files, opened for QEMU and passed as fds.
    for name in (SCRATCH_NAME, "qmp.sock", "agent.sock", "console.log", "metadata.json"):
        assert (vm_dir / name).stat().st_uid == 0, name
    dir_stat = vm_dir.stat()
    assert (dir_stat.st_uid, dir_stat.st_gid, stat.S_IMODE(dir_stat.st_mode)) == (0, account.gid, 0o710)
    # The QEMU process is the account's in every uid and gid, with no supplementary group (TCG).
    status = Path(f"/proc/{pid}/status").read_text()
    assert f"Gid:\t{account.gid}\t{account.gid}\t{account.gid}\t{account.gid}" in status
    groups = next(line for line in status.splitlines() if line.startswith("Groups:"))
    assert groups.split(":", 1)[1].split() == [], groups
    # It still works: exec through the agent socket, QMP status through the QMP socket.
    assert server.exec(vm, "id", "-u").stdout.strip() == "0"  # root in the guest, not on the host
    assert _get(server, vm)["disk_mib"] == DISK_MIB


def test_a_restore_keeps_the_snapshots_disk_and_runs_confined(server: ServerProcess, vm: str) -> None:
    assert server.cli_ok("snapshot", vm, "small-disk").strip() == "small-disk"
    other = server.cli("create", "--from", "small-disk", "--disk", "512")
    assert other.returncode == 1
    assert (
        "INVALID_ARGUMENT" in other.stderr
        and "disk_mib 512 differs from snapshot small-disk's 256" in other.stderr
    )
    clone = server.create("--from", "small-disk")  # audited like every create
    try:
        assert _get(server, clone)["disk_mib"] == DISK_MIB
        layer = server.data_dir / "vms" / clone / SCRATCH_NAME
        assert layer.stat().st_size == DISK_MIB * MIB
        assert server.exec(clone, "true").returncode == 0
    finally:
        server.cli_ok("delete", clone)
        server.cli_ok("snapshots", "rm", "small-disk")


def test_a_bad_disk_size_is_refused_and_leaves_nothing(server: ServerProcess, vm: str) -> None:
    before = (server.vm_dirs(), server.taps(), set(server.vmm_pids()))
    for size in (limits.MIN_DISK_MIB - 1, limits.MAX_DISK_MIB + 1):
        result = server.cli("create", "--disk", str(size))
        assert result.returncode == 1, result
        line = result.stderr.strip()
        assert "\n" not in line and "INVALID_ARGUMENT" in line
        assert f"disk_mib must be between {limits.MIN_DISK_MIB} and {limits.MAX_DISK_MIB}, got {size}" in line
    assert (server.vm_dirs(), server.taps(), set(server.vmm_pids())) == before
    assert server.db_rows("SELECT count(*) FROM vms") == [(1,)]


def test_a_guest_filling_its_disk_gets_enospc_inside(server: ServerProcess, vm: str) -> None:
    layer = server.data_dir / "vms" / vm / SCRATCH_NAME
    started = time.monotonic()
    # Twice the layer: the write must stop at the layer's end, whatever the guest asks.
    fill = server.exec(
        vm, "sh", "-c", f"head -c {2 * DISK_MIB}M /dev/zero > /root/fill; echo exit=$?", timeout=600
    )
    took = time.monotonic() - started
    allocated = layer.stat().st_blocks * 512
    print(
        f"\nguest wrote until full in {took:.1f} s: {fill.stderr.strip()!r}; host file "
        f"{layer.stat().st_size // MIB} MiB, {allocated / MIB:.1f} MiB allocated"
    )
    assert "No space left on device" in fill.stderr
    assert "exit=1" in fill.stdout
    assert layer.stat().st_size == DISK_MIB * MIB and allocated <= DISK_MIB * MIB
    # Inside: full. The guest, the server and the host go on.
    df = server.exec(vm, "df", "-m", "/").stdout.split("\n")[1].split()
    assert df[4] == "100%", df  # the overlay root is full (its upper layer is the disk)
    assert server.exec(vm, "rm", "/root/fill").returncode == 0
    assert server.exec(vm, "sh", "-c", "echo again > /root/after && cat /root/after").stdout == "again\n"
    assert _get(server, vm)["state"] == "running"
    wait_until(lambda: server.health() is not None, 10, "the server to answer")


def test_the_audit_fails_on_a_qemu_running_as_root(tmp_path: Path, qemu_bin: Path) -> None:
    # No clawpot -name: the session's auditor leaves this one to the test.
    proc = subprocess.Popen(
        [str(qemu_bin), "-M", "microvm", "-accel", "tcg", "-nodefaults", "-display", "none", "-S"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: os.readlink(f"/proc/{proc.pid}/exe").endswith("qemu-system-x86_64"), 10, "exec")
        with pytest.raises(AssertionError) as info:
            audit_qemu(proc.pid)
        message = str(info.value)
        assert "uids 0 0 0 0" in message and "Seccomp: 0" in message and "not chrooted" in message
    finally:
        proc.kill()
        proc.wait(10)


def test_vm_records_say_their_disk(server: ServerProcess, vm: str) -> None:
    with server.stub() as api:
        got = api.GetVm(vm_pb2.GetVmRequest(id=vm), timeout=30)
    assert got.disk_mib == DISK_MIB
    assert server.db_rows(f"SELECT disk_mib FROM vms WHERE id = '{vm}'") == [(DISK_MIB,)]


DIES_WITH_PARENT = """
import asyncio, sys
from pathlib import Path
from clawpot.vmm.qemu.cmdline import Accel
from clawpot.vmm.qemu.process import QemuProcess
from clawpot.vmm.spec import Drive, VmSpec

async def main() -> None:
    kernel, rootfs, vm_dir = map(Path, sys.argv[1:4])
    spec = VmSpec(kernel, "console=ttyS0 root=/dev/vda ro init=/bin/sleep -- 600",
                  (Drive("root", rootfs, True),), memory_mib=64, agent_channel=False)
    qemu = QemuProcess(spec, vm_dir, accel=Accel.TCG, die_with_parent=True)
    await qemu.start()
    print(qemu.pid, flush=True)
    await asyncio.sleep(600)

asyncio.run(main())
"""


def test_an_unprivileged_qemu_still_dies_with_its_launcher(
    tmp_path: Path, installed_assets: InstalledAssets
) -> None:
    # The parent-death signal is cleared by a change of uid: setpriv must set it after its own.
    # The VM directory's name is its cgroup's: unique, and removed here (nobody reaps this QEMU).
    vm_dir = tmp_path / f"dies-with-launcher-{os.getpid()}"
    launcher = subprocess.Popen(
        [sys.executable, "-c", DIES_WITH_PARENT, str(installed_assets.kernel), str(installed_assets.rootfs),
         str(vm_dir)],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert launcher.stdout is not None
        qemu = int(launcher.stdout.readline())
        assert audit_qemu(qemu).uid == vmm_account().uid
    finally:
        launcher.kill()
        launcher.wait(10)
    # Killed: gone, or a zombie until whoever inherited it reaps it.
    wait_until(lambda: _state(qemu) in ("Z", "gone"), 10, "QEMU to die with its launcher")
    cgroup = VmCgroup(vm_dir.name)
    wait_until(lambda: not cgroup.pids(), 10, "the dead QEMU to leave its cgroup")
    assert cgroup.remove(attempts=limits.CGROUP_REMOVE_ATTEMPTS)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"
