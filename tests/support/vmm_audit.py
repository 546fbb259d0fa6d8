"""What /proc says about a running VMM: the proof that defence in depth is in force for every VM.

- ``audit_qemu(pid)``: a Clawpot QEMU runs confined: not root (the VMM account, ``clawpot-vmm``),
  seccomp in filter mode (``Seccomp: 2``: QEMU's ``-sandbox on``), no new privileges, no capability but
  CAP_SYS_CHROOT, a root directory that is not the host's (QEMU chrooted itself after opening what it
  was handed), and no directory open (a directory fd outside the chroot is the way out of it).
- ``audit_cgroup(pid, vm_id)``: the VMM is in its VM's own cgroup (clawpot/<vm id>) in every controller
  that limits it (cpu, memory, pids), on v1 and v2.
- ``audit_jail(pid, chroot)``: a jailed firecracker runs as ``clawpot-vmm``, with its root directory in
  its chroot (not the host's /), as PID 1 of a PID namespace of its own.
- ``audit_vmm`` runs what applies to one VMM (QEMU: ``audit_qemu`` + cgroup; Firecracker: cgroup, +
  jail when jailed); ``audit_vm_dir`` does it for the VMM a VM directory's metadata names.

``VmmAuditor`` runs ``audit_vmm`` for every VMM this test session starts, whoever starts it (an
in-process backend, ``clawpot-driver``, a ``clawpot-server`` in a namespace): a thread watches this
process's descendants and audits each VMM once it has finished starting (QEMU chroots last; the jailer
hands over to firecracker), and the integration tests' autouse fixture (tests/conftest.py) fails the
test during which a VMM failed. ``ServerProcess.create`` also audits the VM it created, at once.
Each check raises ``AssertionError`` saying what it saw.

The KVM probe's QEMU is the one exception, by design (``clawpot.vmm.probe``: it runs as root, booting
only our own kernel and image into ``init=/bin/echo``, outside any VM's cgroup).
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from clawpot import limits
from clawpot.vmm.account import vmm_account
from clawpot.vmm.cgroups import CONTROLLERS, CgroupVersion, hierarchy

# CAP_SYS_CHROOT (18): the one capability QEMU keeps, for its own -chroot (clawpot.vmm.qemu.confine).
CHROOT_ONLY = 1 << 18
QEMU_BINARY = b"qemu-system-x86_64"
FIRECRACKER_BINARY = b"firecracker"
VM_NAME_PREFIX = "clawpot-"
PROBE_NAME_PREFIX = "clawpot-clawpot-probe-"
# A bare firecracker a test starts on purpose, to prove the binary's own behaviour (its API, its boot of
# our kernel): not a Clawpot VMM, so neither jailed nor in a VM cgroup. Its --id says so.
RAW_FIRECRACKER_PREFIX = "raw-"
# How long a QEMU may take from exec to its chroot (the end of its start) under a loaded TCG host.
STARTED_WITHIN = 60.0
# A jailed firecracker is audited once it runs; the jailer drops privileges and execs it a moment after
# writing its PID (the first audit may come in between).
SETTLE_SECONDS = 5.0


@dataclass(frozen=True)
class QemuAudit:
    pid: int
    name: str
    uid: int
    seccomp: int
    no_new_privs: int
    cap_eff: int
    root: str


def _status(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def qemu_vm_name(pid: int) -> str | None:
    """The ``-name`` of a Clawpot QEMU VM (``clawpot-<id>``), None for any other process."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    if not argv or not argv[0].endswith(QEMU_BINARY) or b"-name" not in argv[:-1]:
        return None
    name = argv[argv.index(b"-name") + 1].decode(errors="replace")
    return name if name.startswith(VM_NAME_PREFIX) else None


def read_qemu(pid: int) -> QemuAudit:
    status = _status(pid)
    return QemuAudit(
        pid=pid,
        name=qemu_vm_name(pid) or "?",
        uid=int(status["Uid"].split()[0]),  # real; effective, saved and fs uid follow
        seccomp=int(status["Seccomp"]),
        no_new_privs=int(status["NoNewPrivs"]),
        cap_eff=int(status["CapEff"], 16),
        root=os.readlink(f"/proc/{pid}/root"),
    )


def audit_qemu(pid: int) -> QemuAudit:
    """Assert that QEMU ``pid`` runs confined (see the module doc); returns what /proc said."""
    audit = read_qemu(pid)
    expected_uid = vmm_account().uid
    status = Path(f"/proc/{pid}/status").read_text()
    uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
    problems = []
    if audit.uid == 0 or any(int(uid) != expected_uid for uid in uids):
        problems.append(f"uids {' '.join(uids)}, not the VMM account's {expected_uid}")
    if audit.seccomp != 2:
        problems.append(f"Seccomp: {audit.seccomp}, not 2 (filter)")
    if audit.no_new_privs != 1:
        problems.append("NoNewPrivs is not set")
    if audit.cap_eff & ~CHROOT_ONLY:
        problems.append(f"capabilities {audit.cap_eff:#x} beyond CAP_SYS_CHROOT")
    if audit.root == "/":
        problems.append("not chrooted (root is /)")
    directories = [fd.name for fd in Path(f"/proc/{pid}/fd").iterdir() if _is_directory(fd)]
    if directories:
        problems.append(f"directories open (fds {', '.join(directories)}): a way out of the chroot")
    assert not problems, f"QEMU {pid} ({audit.name}): " + "; ".join(problems)
    return audit


def _is_directory(fd: Path) -> bool:
    try:
        return stat.S_ISDIR(os.stat(fd).st_mode)
    except OSError:
        return False


@dataclass(frozen=True)
class VmmAudit:
    pid: int
    cgroups: dict[str, str]  # controller (v2: "") -> cgroup path, as /proc/PID/cgroup says
    uid: int | None = None
    root_is_host_root: bool | None = None
    pid_namespace: str | None = None
    qemu: QemuAudit | None = None


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


def audit_vmm(
    pid: int, vm_id: str, *, qemu: bool = False, jailed: bool = False, chroot: Path | None = None
) -> VmmAudit:
    """Every layer one VMM must be under: QEMU's confinement (``qemu``), its VM's cgroup, the jail
    (``jailed``: a firecracker under the jailer, chrooted in ``chroot`` when given)."""
    qemu_audit = audit_qemu(pid) if qemu else None
    cgroups = audit_cgroup(pid, vm_id)
    if not jailed:
        return VmmAudit(pid, cgroups, qemu=qemu_audit)
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
    return audit_vmm(
        metadata.vmm_pid,
        vm_dir.name,
        qemu=metadata.backend == "qemu",
        jailed=jailed and is_firecracker,
        chroot=chroot,
    )


def _descendants(ancestor: int) -> set[int]:
    parents: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                line = Path(f"/proc/{entry.name}/stat").read_text()
                parents[int(entry.name)] = int(line.rsplit(")", 1)[1].split()[1])
    found: set[int] = set()
    frontier = {ancestor}
    while frontier:
        children = {pid for pid, ppid in parents.items() if ppid in frontier and pid not in found}
        found |= children
        frontier = children
    return found


def firecracker_vm_id(pid: int) -> str | None:
    """The ``--id`` of a firecracker process (jailed or not), None for any other process."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    if not argv or os.path.basename(argv[0]) != FIRECRACKER_BINARY or b"--id" not in argv[:-1]:
        return None
    return argv[argv.index(b"--id") + 1].decode(errors="replace")


class VmmAuditor:
    """Audits every Clawpot VMM (QEMU VM, firecracker) that descends from this process, once started."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.audited: dict[int, str] = {}  # pid -> "qemu" or "firecracker"
        self.failures: list[str] = []
        self._seen: dict[int, float] = {}  # pid -> when first seen (still starting)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vmm-auditor", daemon=True)

    def start(self) -> VmmAuditor:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def take_failures(self) -> list[str]:
        with self._lock:
            failures, self.failures = self.failures, []
        return failures

    def counts(self) -> dict[str, int]:
        """How many VMMs of each kind were audited."""
        kinds = list(self.audited.values())
        return {kind: kinds.count(kind) for kind in ("qemu", "firecracker")}

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.wait(self.interval):
            try:
                self._scan(me)
            except Exception as exc:  # a broken auditor must be loud, not silent
                with self._lock:
                    self.failures.append(f"VMM auditor failed: {exc!r}")

    def _scan(self, me: int) -> None:
        now = time.monotonic()
        my_pid_ns = os.readlink("/proc/self/ns/pid")
        for pid in _descendants(me):
            if pid in self.audited:
                continue
            name = qemu_vm_name(pid)
            fc_id = None if name is not None else firecracker_vm_id(pid)
            if (name is None or name.startswith(PROBE_NAME_PREFIX)) and fc_id is None:
                continue
            if fc_id is not None and fc_id.startswith(RAW_FIRECRACKER_PREFIX):
                continue
            first_seen = self._seen.setdefault(pid, now)
            try:
                if name is not None:
                    if os.readlink(f"/proc/{pid}/root") == "/" and now - first_seen < STARTED_WITHIN:
                        continue  # still starting: QEMU chroots last
                    check = (name.removeprefix(VM_NAME_PREFIX), True, False)
                else:
                    # Only the jailer starts firecracker in a PID namespace of its own (--no-jailer
                    # runs it bare, as root: then its cgroup is all there is to check).
                    jailed = os.readlink(f"/proc/{pid}/ns/pid") != my_pid_ns
                    check = (fc_id or "", False, jailed)
            except OSError:
                continue  # gone: a VMM that never finished starting (its test says why)
            vm_id, qemu, jailed = check
            try:
                audit_vmm(pid, vm_id, qemu=qemu, jailed=jailed)
            except AssertionError as exc:
                with self._lock:
                    self.failures.append(str(exc))
            except (OSError, ValueError, KeyError):
                continue  # exited while being read
            self.audited[pid] = "qemu" if qemu else "firecracker"
        for pid in [p for p in self._seen if p not in self.audited and not Path(f"/proc/{p}").exists()]:
            del self._seen[pid]
