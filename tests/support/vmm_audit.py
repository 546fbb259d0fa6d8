"""What /proc says about a running VMM: the defence-in-depth layers it must be under (issue 13).

``audit_cgroup(pid, vm_id)``: the VMM is in its VM's own cgroup (clawpot/<vm id>) in every controller
that limits it (cpu, memory, pids), on v1 and v2. ``audit_jail(pid, chroot)``: a jailed firecracker
runs as the unprivileged clawpot-vmm user, with its root directory in its chroot (not the host's /),
in a PID namespace of its own. ``audit_vmm`` runs what applies to a VMM; the integration suite calls
it for every VMM it starts (tests/integration/conftest.py for VMMs started in the test process,
``ServerProcess.create`` for a server's VMs). Each check raises ``AssertionError`` saying what it saw.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from clawpot import limits
from clawpot.vmm.account import vmm_account
from clawpot.vmm.cgroups import CONTROLLERS, CgroupVersion, hierarchy

# A jailed firecracker is audited once it runs; the jailer drops privileges and execs it a moment after
# writing its PID (the first audit may come in between).
SETTLE_SECONDS = 5.0


@dataclass(frozen=True)
class VmmAudit:
    pid: int
    cgroups: dict[str, str]  # controller (v2: "") -> cgroup path, as /proc/PID/cgroup says
    uid: int | None = None
    root_is_host_root: bool | None = None
    pid_namespace: str | None = None


def proc_cgroups(pid: int) -> dict[str, str]:
    """/proc/PID/cgroup as controller -> path (v2's line under "")."""
    found: dict[str, str] = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for name in controllers.split(",") if controllers else [""]:
            found[name] = path
    return found


def audit_cgroup(pid: int, vm_id: str) -> dict[str, str]:
    cgroups = proc_cgroups(pid)
    wanted = f"/{limits.CGROUP_PARENT}/{vm_id}"
    names = [""] if hierarchy().version is CgroupVersion.V2 else list(CONTROLLERS)
    for name in names:
        assert cgroups.get(name) == wanted, (
            f"VMM {pid}: {name or 'v2'} cgroup is {cgroups.get(name)!r}, not {wanted}"
        )
    return cgroups


def audit_jail(pid: int, chroot: Path | None = None) -> tuple[int, str]:
    """The jailed firecracker's uid, and its PID namespace; its root is its chroot."""
    uid = vmm_account().uid
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        uids = _status_ids(pid, "Uid")
        if set(uids) == {uid} or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert set(uids) == {uid}, f"firecracker {pid} runs as uids {uids}, not clawpot-vmm ({uid})"
    root = os.stat(f"/proc/{pid}/root")
    host = os.stat("/")
    assert (root.st_dev, root.st_ino) != (host.st_dev, host.st_ino), (
        f"firecracker {pid}: root is the host's /"
    )
    if chroot is not None:
        jail = os.stat(chroot)
        assert (root.st_dev, root.st_ino) == (jail.st_dev, jail.st_ino), (
            f"firecracker {pid}: root is not {chroot}"
        )
    namespace = os.readlink(f"/proc/{pid}/ns/pid")
    assert namespace != os.readlink("/proc/self/ns/pid"), f"firecracker {pid} shares the host's PID namespace"
    # Init of its namespace: its own PID there is 1.
    assert _status_ids(pid, "NSpid")[-1] == 1, f"firecracker {pid} is not PID 1 of its namespace"
    return uid, namespace


def audit_vmm(pid: int, vm_id: str, *, jailed: bool = False, chroot: Path | None = None) -> VmmAudit:
    cgroups = audit_cgroup(pid, vm_id)
    if not jailed:
        return VmmAudit(pid, cgroups)
    uid, namespace = audit_jail(pid, chroot)
    return VmmAudit(pid, cgroups, uid=uid, root_is_host_root=False, pid_namespace=namespace)


def _status_ids(pid: int, key: str) -> list[int]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return [int(v) for v in line.split()[1:]]
    return []


def audit_vm_dir(vm_dir: Path, *, jailed: bool = True) -> VmmAudit | None:
    """Audit the VMM a VM directory's metadata names (a server's VM: ``ServerProcess.create``); None
    when it names none (the VM is not running). ``jailed``: a firecracker runs under the jailer."""
    from clawpot.vm.directory import read_metadata

    metadata = read_metadata(vm_dir / "metadata.json")
    if metadata is None or metadata.vmm_pid is None:
        return None
    is_firecracker = metadata.backend == "firecracker"
    chroot = vm_dir / "jail" / "firecracker" / vm_dir.name / "root"
    return audit_vmm(metadata.vmm_pid, vm_dir.name, jailed=jailed and is_firecracker, chroot=chroot)


def install_start_audit() -> None:
    """Audit every VMM started in this process by an integration test, right after its start returns
    (the VMM runs; a jailed firecracker has been handed over). Installed once by
    tests/integration/conftest.py; unit tests (stand-in VMMs) are left alone."""
    from clawpot.vmm.firecracker.handle import FirecrackerVmm
    from clawpot.vmm.qemu.process import QemuProcess

    if getattr(FirecrackerVmm.start, "_audited", False):
        return

    original_fc = FirecrackerVmm.start
    original_qemu = QemuProcess.start

    async def fc_start(self: FirecrackerVmm) -> None:
        await original_fc(self)
        if _in_integration_test() and self.pid is not None and self.exit_info is None:
            jail = self.jail
            audit_vmm(self.pid, self.vm_dir.name, jailed=jail is not None, chroot=jail.root if jail else None)

    async def qemu_start(self: QemuProcess) -> None:
        await original_qemu(self)
        if _in_integration_test() and self.pid is not None and self.exit_info is None:
            audit_vmm(self.pid, self.vm_dir.name)

    fc_start._audited = True  # type: ignore[attr-defined]
    FirecrackerVmm.start = fc_start  # type: ignore[method-assign]
    QemuProcess.start = qemu_start  # type: ignore[method-assign]


def _in_integration_test() -> bool:
    return os.environ.get("PYTEST_CURRENT_TEST", "").startswith("tests/integration/")


def _identity(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino
