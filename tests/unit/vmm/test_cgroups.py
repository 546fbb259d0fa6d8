"""Per-VM cgroups (clawpot.vmm.cgroups): which hierarchy a host has, the limits in either version's
files, the jailer's arguments, OOM accounting and removal.

Detection and the file formats are pure logic, tested on mount tables and directory trees made here (a
v2 host cannot be conjured on this v1 one). The real hierarchy is used where it exists: a cgroup made,
a real command run inside it, read and removed (tests/integration/test_defence_layers.py kills a
real VMM through its memory limit).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from clawpot import limits
from clawpot.vmm.base import ExitInfo, VmmStartError
from clawpot.vmm.cgroups import (
    MIB,
    CgroupError,
    CgroupLimits,
    CgroupVersion,
    Hierarchy,
    VmCgroup,
    cgroup_paths,
    detect,
    hierarchy,
)

HYBRID = """\
sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/cpuacct cgroup rw,relatime,cpuacct 0 0
cgroup /sys/fs/cgroup/cpuset cgroup rw,relatime,cpuset 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup /sys/fs/cgroup/pids cgroup rw,relatime,pids 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,relatime,name=systemd 0 0
cgroup2 {unified} cgroup2 rw,relatime 0 0
"""


def mounts(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mounts"
    path.write_text(text)
    return path


def test_a_hybrid_host_with_an_empty_unified_hierarchy_is_v1(tmp_path: Path) -> None:
    unified = tmp_path / "unified"
    unified.mkdir()
    (unified / "cgroup.controllers").write_text("")  # systemd's hybrid mode: no controllers there
    found = detect(mounts(tmp_path, HYBRID.format(unified=unified)))
    assert found.version is CgroupVersion.V1
    assert found.root("memory") == Path("/sys/fs/cgroup/memory")
    assert found.root("cpuset") == Path("/sys/fs/cgroup/cpuset")


def test_v2_where_the_unified_hierarchy_has_the_controllers(tmp_path: Path) -> None:
    unified = tmp_path / "unified"
    unified.mkdir()
    (unified / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids rdma misc\n")
    found = detect(mounts(tmp_path, HYBRID.format(unified=unified)))
    assert found.version is CgroupVersion.V2
    assert {found.root(name) for name in ("cpu", "memory", "pids")} == {unified}


def test_no_controllers_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CgroupError, match=r"controller\(s\) cpu, memory, pids not mounted"):
        detect(mounts(tmp_path, "sysfs /sys sysfs rw 0 0\n"))


def test_limits_from_the_vm_and_the_measured_overhead() -> None:
    values = CgroupLimits.for_vm(vcpus=2, memory_mib=512)
    assert values.memory_mib == 512 + limits.VM_OVERHEAD_MIB
    assert values.values(CgroupVersion.V2) == [
        ("cpu.max", "300000 100000"),  # 2 vCPUs + 1 for the VMM's own threads
        ("memory.max", str((512 + limits.VM_OVERHEAD_MIB) * MIB)),
        ("memory.oom.group", "1"),
        ("pids.max", str(limits.CGROUP_PIDS_MAX)),
    ]
    assert values.values(CgroupVersion.V1) == [
        ("cpu.cfs_period_us", "100000"),
        ("cpu.cfs_quota_us", "300000"),
        ("memory.limit_in_bytes", str((512 + limits.VM_OVERHEAD_MIB) * MIB)),
        ("pids.max", str(limits.CGROUP_PIDS_MAX)),
    ]


def fake_v2(tmp_path: Path) -> Hierarchy:
    root = tmp_path / "cg2"
    root.mkdir()
    return Hierarchy(CgroupVersion.V2, {name: root for name in ("cpu", "memory", "pids", "cpuset")})


def test_v2_create_enables_controllers_level_by_level_and_writes_the_values(tmp_path: Path) -> None:
    hier = fake_v2(tmp_path)
    cgroup = VmCgroup("abc123", hier)
    cgroup.create(CgroupLimits.for_vm(1, 256))
    root = hier.root("memory")
    assert (root / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"
    assert (root / "clawpot" / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"
    own = root / "clawpot" / "abc123"
    assert (own / "memory.oom.group").read_text() == "1"
    assert (own / "cpu.max").read_text() == "200000 100000"
    assert cgroup.memory_limit_mib() == 256 + limits.VM_OVERHEAD_MIB


def test_oom_kills_are_read_and_named_in_the_exit_reason(tmp_path: Path) -> None:
    hier = fake_v2(tmp_path)
    cgroup = VmCgroup("vm1", hier)
    cgroup.create(CgroupLimits.for_vm(1, 64))
    events = cgroup.directory("memory") / "memory.events"
    killed = ExitInfo(None, 9, "qemu killed by SIGKILL")
    events.write_text("low 0\nhigh 0\nmax 12\noom 1\noom_kill 0\noom_group_kill 0\n")
    assert cgroup.explain(killed) is killed  # the limit was reached, but nothing was killed for it
    events.write_text("low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 1\n")
    said = cgroup.explain(killed)
    assert (
        said.reason
        == f"out of memory (cgroup limit {64 + limits.VM_OVERHEAD_MIB} MiB): qemu killed by SIGKILL"
    )
    assert (said.returncode, said.signal) == (None, 9)


def test_jailer_arguments_name_the_parent_and_every_value(tmp_path: Path) -> None:
    args = VmCgroup("vm1", fake_v2(tmp_path)).jailer_args(CgroupLimits.for_vm(1, 128))
    assert args[:4] == ["--cgroup-version", "2", "--parent-cgroup", "clawpot"]
    assert args[4:] == [
        "--cgroup", "cpu.max=200000 100000",
        "--cgroup", f"memory.max={(128 + limits.VM_OVERHEAD_MIB) * MIB}",
        "--cgroup", "memory.oom.group=1",
        "--cgroup", f"pids.max={limits.CGROUP_PIDS_MAX}",
    ]  # fmt: skip


def test_v1_jailer_arguments_carry_cpuset(tmp_path: Path) -> None:
    roots = {name: tmp_path / name for name in ("cpu", "memory", "pids", "cpuset")}
    for path in roots.values():
        path.mkdir()
    (roots["cpuset"] / "cpuset.mems").write_text("0\n")
    (roots["cpuset"] / "cpuset.cpus").write_text("0-3\n")
    args = VmCgroup("vm1", Hierarchy(CgroupVersion.V1, roots)).jailer_args(CgroupLimits.for_vm(1, 128))
    assert args[:4] == ["--cgroup-version", "1", "--parent-cgroup", "clawpot"]
    assert args[-4:] == ["--cgroup", "cpuset.mems=0", "--cgroup", "cpuset.cpus=0-3"]


def test_removing_a_cgroup_that_is_not_there_is_fine(tmp_path: Path) -> None:
    assert VmCgroup("never", fake_v2(tmp_path)).remove()


@pytest.fixture
def real_cgroup(root_required: None) -> VmCgroup:
    try:
        hierarchy()
    except CgroupError as exc:
        pytest.skip(f"no cgroup hierarchy here: {exc}")
    return VmCgroup(f"unit-{os.getpid()}")


def test_a_real_command_runs_inside_and_the_cgroup_goes_after(real_cgroup: VmCgroup) -> None:
    real_cgroup.create(CgroupLimits.for_vm(1, 64))
    try:
        child = subprocess.run(real_cgroup.wrap(["cat", "/proc/self/cgroup"]), capture_output=True, text=True)
        wanted = f"/{limits.CGROUP_PARENT}/{real_cgroup.vm_id}"
        lines = child.stdout.splitlines()
        if real_cgroup.version is CgroupVersion.V2:
            assert f"0::{wanted}" in lines
        else:
            for name in ("cpu", "memory", "pids"):
                assert any(line.endswith(f":{name}:{wanted}") for line in lines), child.stdout
        assert real_cgroup.memory_limit_mib() == 64 + limits.VM_OVERHEAD_MIB
        assert set(cgroup_paths(real_cgroup.vm_id)) >= {"cpu", "memory", "pids"}
        assert real_cgroup.oom_kills() == 0 and real_cgroup.pids() == set()  # the child exited
        with pytest.raises(VmmStartError, match="cannot run /no/such/vmm: No such file or directory"):
            real_cgroup.wrap(["/no/such/vmm"])
    finally:
        assert real_cgroup.remove(attempts=limits.CGROUP_REMOVE_ATTEMPTS)
    assert not real_cgroup.exists() and cgroup_paths(real_cgroup.vm_id) == {}
