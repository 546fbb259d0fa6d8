"""Defence in depth (issue 13) through a real server: per-VM cgroups and the jailed Firecracker.

- A QEMU/TCG VM whose guest touches more memory than its cgroup allows: the kernel kills its QEMU
  alone; the VM goes to Error with "out of memory (cgroup limit N MiB)", its cgroup is removed, the
  neighbour VM still execs and the server still answers. The limit is lowered by the test after boot
  (to the VM's usage + a margin) so the guest reaches it in a second instead of filling 192 MiB of
  overhead under TCG; the kernel's OOM killer and the server's handling are the real ones.
- A Firecracker VM (the server's default launch is the jailer): while it runs, /proc shows it as
  clawpot-vmm, chrooted in its VM directory, in a PID namespace and a cgroup of its own
  (tests/support/vmm_audit.py); on this host its guest kernel dies (kvm_pvm), the create fails with
  firecracker's reason, and nothing is left: no process, directory, chroot, cgroup or socket. On a KVM
  host where the guest boots, the VM is deleted instead and the same must hold.

Everything runs in a network namespace this module creates; the server is reached over its unix socket.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from server_harness import InstalledAssets, ServerProcess, proc_exists, server_in_namespace, wait_until
from support.vmm_audit import VmmAudit, audit_vm_dir

from clawpot import limits
from clawpot.v1 import vm_pb2
from clawpot.vm.directory import read_metadata
from clawpot.vmm.cgroups import MIB, CgroupVersion, VmCgroup, hierarchy

SUBNET = "192.168.78.0/29"
# Above the VM's memory use after boot: what the guest may still touch before its VMM is killed.
OOM_MARGIN_MIB = 24
# What the guest writes (python bytes of this size: every page touched), well over the margin and
# well within its 256 MiB of RAM (so the guest itself is never short of memory).
TOUCH_MIB = 128


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, installed_assets: InstalledAssets
) -> Iterator[ServerProcess]:
    with server_in_namespace(tmp_path_factory.mktemp("layers"), installed_assets, "--subnet", SUBNET) as srv:
        yield srv


def _memory_usage(cgroup: VmCgroup) -> int:
    name = "memory.current" if cgroup.version is CgroupVersion.V2 else "memory.usage_in_bytes"
    return int((cgroup.directory("memory") / name).read_text())


def _set_memory_limit(cgroup: VmCgroup, value: int) -> None:
    name = "memory.max" if cgroup.version is CgroupVersion.V2 else "memory.limit_in_bytes"
    (cgroup.directory("memory") / name).write_text(str(value))


def test_a_vm_over_its_memory_limit_dies_alone(server: ServerProcess) -> None:
    victim = server.create("--vmm", "qemu")
    neighbour = server.create("--vmm", "qemu")
    cgroup = VmCgroup(victim)
    configured = cgroup.memory_limit_mib()
    assert configured == 256 + limits.VM_OVERHEAD_MIB  # guest RAM + the measured VMM overhead
    usage = _memory_usage(cgroup)
    limit = usage + OOM_MARGIN_MIB * MIB
    _set_memory_limit(cgroup, limit)
    print(f"\nVM {victim}: {usage / MIB:.0f} MiB used after boot; limit {configured} -> {limit // MIB} MiB")

    started = time.monotonic()
    touched = server.exec(victim, "python3", "-c", f"x = b'x' * ({TOUCH_MIB} << 20)", timeout=120)
    assert touched.returncode != 0, "the guest touched its memory and its VMM survived the limit"

    def errored() -> bool:
        return server.vms()[victim].state == vm_pb2.VM_STATE_ERROR

    wait_until(errored, 60, f"VM {victim} in Error")
    error = server.vms()[victim].error
    print(f"Error after {time.monotonic() - started:.1f} s: {error}")
    assert error.startswith(f"out of memory (cgroup limit {limit // MIB} MiB): qemu killed by SIGKILL"), error
    assert not cgroup.exists(), "the dead VMM's cgroup was left behind"
    # Only that VMM died: the neighbour works, and so does the server.
    assert server.vms()[neighbour].state == vm_pb2.VM_STATE_RUNNING
    result = server.exec(neighbour, "echo", "alive")
    assert (result.returncode, result.stdout) == (0, "alive\n"), result.stderr
    assert server.health() == 1  # SERVING
    for vm_id in (victim, neighbour):
        server.cli_ok("delete", vm_id)
    assert not VmCgroup(neighbour).exists()


def _cgroup_names() -> set[str]:
    root = hierarchy().root("memory") / limits.CGROUP_PARENT
    return {p.name for p in root.iterdir() if p.is_dir()} if root.exists() else set()


def test_a_jailed_firecracker_vm_is_audited_and_leaves_nothing(server: ServerProcess) -> None:
    cgroups_before = _cgroup_names()
    create = server.cli_popen("create", "--vmm", "firecracker", stdout=-1, stderr=-1)
    audits: list[VmmAudit] = []

    def audited() -> bool:
        for vm_dir in (server.data_dir / "vms").glob("*"):
            metadata = read_metadata(vm_dir / "metadata.json")
            if metadata is not None and metadata.vmm_pid is not None and proc_exists(metadata.vmm_pid):
                found = audit_vm_dir(vm_dir)
                if found is not None:
                    audits.append(found)
                    return True
        return create.poll() is not None

    wait_until(audited, 120, "the firecracker VM's process", interval=0.02)
    code = create.wait(180)
    assert create.stdout is not None and create.stderr is not None
    out, err = create.stdout.read().decode(), create.stderr.read().decode()
    assert audits, f"firecracker never ran long enough to be audited: {err}"
    audit = audits[0]
    print(f"\njailed firecracker pid {audit.pid}: uid {audit.uid}, pid namespace {audit.pid_namespace}")
    print(f"cgroups: {audit.cgroups}")
    if code == 0:  # a KVM host where the guest boots: delete it, then the same must hold
        server.cli_ok("delete", out.strip())
    else:
        print(f"create failed as expected on this host: {err.strip().splitlines()[0]}")
        assert "firecracker" in err and ("KVM_EXIT_INTERNAL_ERROR" in err or "exited" in err), err
    assert not proc_exists(audit.pid), "firecracker left running"
    assert not any(_exe_is_fc(pid) for pid in server.ns.pids()), "a firecracker is left in the namespace"
    assert server.vm_dirs() == set(), "VM directory (and its chroot, sockets) left behind"
    assert _cgroup_names() <= cgroups_before, "the VM's cgroup was left behind"


def _exe_is_fc(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/exe").resolve().name == "firecracker"
    except OSError:
        return False
