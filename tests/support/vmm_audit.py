"""What /proc says about a running VMM: the proof that defence in depth is in force for every VM.

``audit_qemu(pid)`` checks one Clawpot QEMU: not root (the VMM account, ``clawpot-vmm``), seccomp in
filter mode (``Seccomp: 2``: QEMU's ``-sandbox on``), no new privileges, no capability but
CAP_SYS_CHROOT, a root directory that is not the host's (QEMU chrooted itself after opening what it
was handed), and no directory open (a directory fd outside the chroot is the way out of it).

``QemuAuditor`` runs it for every QEMU VM this test session starts, whoever starts it (an in-process
backend, ``clawpot-driver``, a ``clawpot-server`` in a namespace): a thread watches this process's
descendants, audits each QEMU once it has finished starting (it chroots last), and the integration
tests' autouse fixture (tests/conftest.py) fails the test during which a QEMU failed.

The KVM probe's QEMU is the one exception, by design (``clawpot.vmm.probe``: it runs as root, booting
only our own kernel and image into ``init=/bin/echo``).
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from clawpot.vmm.account import vmm_account

# CAP_SYS_CHROOT (18): the one capability QEMU keeps, for its own -chroot (clawpot.vmm.qemu.confine).
CHROOT_ONLY = 1 << 18
QEMU_BINARY = b"qemu-system-x86_64"
VM_NAME_PREFIX = "clawpot-"
PROBE_NAME_PREFIX = "clawpot-clawpot-probe-"
# How long a QEMU may take from exec to its chroot (the end of its start) under a loaded TCG host.
STARTED_WITHIN = 60.0


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


class QemuAuditor:
    """Audits every Clawpot QEMU VM that descends from this process, once it has started."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.audited: dict[int, QemuAudit] = {}
        self.failures: list[str] = []
        self._seen: dict[int, float] = {}  # pid -> when first seen (still starting)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="qemu-auditor", daemon=True)

    def start(self) -> QemuAuditor:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def take_failures(self) -> list[str]:
        with self._lock:
            failures, self.failures = self.failures, []
        return failures

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.wait(self.interval):
            try:
                self._scan(me)
            except Exception as exc:  # a broken auditor must be loud, not silent
                with self._lock:
                    self.failures.append(f"QEMU auditor failed: {exc!r}")

    def _scan(self, me: int) -> None:
        now = time.monotonic()
        for pid in _descendants(me):
            if pid in self.audited:
                continue
            name = qemu_vm_name(pid)
            if name is None or name.startswith(PROBE_NAME_PREFIX):
                continue
            first_seen = self._seen.setdefault(pid, now)
            try:
                root = os.readlink(f"/proc/{pid}/root")
            except OSError:
                continue  # gone: a QEMU that never finished starting (its test says why)
            if root == "/" and now - first_seen < STARTED_WITHIN:
                continue  # still starting: QEMU chroots last
            try:
                audit = audit_qemu(pid)
            except AssertionError as exc:
                with self._lock:
                    self.failures.append(str(exc))
                audit = read_qemu(pid)
            except OSError:
                continue
            self.audited[pid] = audit
        for pid in [p for p in self._seen if p not in self.audited and not Path(f"/proc/{p}").exists()]:
            del self._seen[pid]
