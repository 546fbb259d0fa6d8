"""Per-VM cgroups: every VMM (QEMU, Firecracker) runs in a cgroup of its own with CPU, memory and task
limits, so one VM cannot starve the host or its neighbours, and a VMM over its memory is killed alone.

    <root>/clawpot/<vm id>              cgroup v2 (the unified hierarchy, where it has the controllers)
    <root>/<controller>/clawpot/<vm id> cgroup v1 otherwise (cpu, memory, pids; + cpuset for the jailer)

- ``CgroupLimits.for_vm(vcpus, memory_mib)``: CPU quota = vcpus + one CPU (the VMM's own threads),
  memory = guest RAM + the measured VMM overhead (``limits.VM_OVERHEAD_MIB``, the number admission
  reserves), a task bound;
  ``values(version)`` spells them in the files of either version (v2 adds ``memory.oom.group``).
- ``hierarchy()``: which version this host runs and where its controllers are mounted (cached).
- ``VmCgroup``: one VM's cgroup. ``create`` + ``wrap(argv)`` (a shell joins the cgroup and execs the
  VMM: it is in the cgroup before it runs a single instruction of its own, so all its memory is
  charged there) for VMMs we start ourselves; ``jailer_args`` for Firecracker's jailer, which creates
  and joins it itself.
  ``oom_kills`` / ``explain`` turn a VMM killed by its memory limit into "out of memory (cgroup limit N
  MiB)"; ``remove`` (EBUSY retried) after the VMM is gone; ``kill`` for VMMs nobody tracks any more.
- ``cgroup_paths(vm_id)``: a VM's cgroup directories by controller (what metrics read CPU and memory
  from).

On v1 an OOM kill inside a VM's memory cgroup can only hit the VMM: it is the only process there.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import functools
import logging
import os
import shutil
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from clawpot import limits
from clawpot.vmm.base import ExitInfo, VmmStartError

log = logging.getLogger(__name__)

MIB = 1024 * 1024
MOUNTS = Path("/proc/self/mounts")
# The controllers every VM's cgroup uses; the jailer on v1 also needs cpuset (it must be given
# cpuset.mems and cpuset.cpus there, or it fails: shared/DESIGN.md).
CONTROLLERS = ("cpu", "memory", "pids")
JAILER_V1_CONTROLLERS = (*CONTROLLERS, "cpuset")
# Every v1 controller a VM's cgroup may have a directory in (what removal looks at).
_V1_ALL = (*JAILER_V1_CONTROLLERS, "cpuacct")


class CgroupError(VmmStartError):
    """No usable cgroup hierarchy, or a VM's cgroup could not be made (one line, says which)."""


class CgroupVersion(enum.IntEnum):
    V1 = 1
    V2 = 2


@dataclass(frozen=True)
class CgroupLimits:
    cpu_quota_us: int
    cpu_period_us: int
    memory_bytes: int
    pids_max: int

    @classmethod
    def for_vm(cls, vcpus: int, memory_mib: int) -> CgroupLimits:
        period = limits.CGROUP_CPU_PERIOD_US
        return cls(
            cpu_quota_us=(vcpus + limits.CGROUP_VMM_EXTRA_CPUS) * period,
            cpu_period_us=period,
            memory_bytes=(memory_mib + limits.VM_OVERHEAD_MIB) * MIB,
            pids_max=limits.CGROUP_PIDS_MAX,
        )

    @property
    def memory_mib(self) -> int:
        return self.memory_bytes // MIB

    def values(self, version: CgroupVersion) -> list[tuple[str, str]]:
        """(file, value) pairs in the order they are written."""
        if version is CgroupVersion.V2:
            return [
                ("cpu.max", f"{self.cpu_quota_us} {self.cpu_period_us}"),
                ("memory.max", str(self.memory_bytes)),
                # An OOM kill takes the whole cgroup (the VMM and anything it may have started), never
                # a part of it that would leave a half-dead VMM behind.
                ("memory.oom.group", "1"),
                ("pids.max", str(self.pids_max)),
            ]
        return [
            ("cpu.cfs_period_us", str(self.cpu_period_us)),
            ("cpu.cfs_quota_us", str(self.cpu_quota_us)),
            ("memory.limit_in_bytes", str(self.memory_bytes)),
            ("pids.max", str(self.pids_max)),
        ]


@dataclass(frozen=True)
class Hierarchy:
    """Where this host's cgroup controllers are: v2, one root for all; v1, one mount per controller."""

    version: CgroupVersion
    roots: Mapping[str, Path]

    def root(self, controller: str) -> Path:
        try:
            return self.roots[controller]
        except KeyError:
            raise CgroupError(f"cgroup controller {controller!r} is not mounted") from None


def detect(mounts: Path = MOUNTS) -> Hierarchy:
    """v2 where a cgroup2 mount offers cpu, memory and pids; v1 (one mount per controller) otherwise.

    A hybrid host (systemd's /sys/fs/cgroup/unified with no controllers, v1 beside it) is v1.
    """
    v1: dict[str, Path] = {}
    v2: Path | None = None
    for line in mounts.read_text().splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        where = Path(fields[1].replace("\\040", " "))
        if fields[2] == "cgroup2" and v2 is None:
            with contextlib.suppress(OSError):
                if set(CONTROLLERS) <= set((where / "cgroup.controllers").read_text().split()):
                    v2 = where
        elif fields[2] == "cgroup":
            for option in fields[3].split(","):
                if option in _V1_ALL:
                    v1.setdefault(option, where)
    if v2 is not None:
        return Hierarchy(CgroupVersion.V2, {name: v2 for name in (*CONTROLLERS, "cpuset")})
    missing = [name for name in CONTROLLERS if name not in v1]
    if missing:
        raise CgroupError(f"no usable cgroup hierarchy: controller(s) {', '.join(missing)} not mounted")
    return Hierarchy(CgroupVersion.V1, v1)


@functools.cache
def hierarchy() -> Hierarchy:
    """This host's hierarchy (detected once per process: mounts do not change under a running server)."""
    return detect()


class VmCgroup:
    """One VM's cgroup (named by the VM's id) in ``hier`` (default: this host's)."""

    def __init__(self, vm_id: str, hier: Hierarchy | None = None) -> None:
        self.vm_id = vm_id
        self.hier = hier if hier is not None else hierarchy()

    @property
    def version(self) -> CgroupVersion:
        return self.hier.version

    def directory(self, controller: str) -> Path:
        return self.hier.root(controller) / limits.CGROUP_PARENT / self.vm_id

    @property
    def directories(self) -> dict[str, Path]:
        """Every directory the VM's cgroup may have, by controller (v2: all the same one)."""
        names = CONTROLLERS if self.version is CgroupVersion.V2 else _V1_ALL
        return {name: self.directory(name) for name in names if name in self.hier.roots}

    def _distinct(self, controllers: tuple[str, ...] = CONTROLLERS) -> list[Path]:
        return list(dict.fromkeys(self.directory(name) for name in controllers))

    def exists(self) -> bool:
        return any(path.is_dir() for path in self.directories.values())

    # -- making it ---------------------------------------------------------------------------------

    def create(self, values: CgroupLimits) -> None:
        """Make the cgroup with ``values``; on failure nothing of it is left."""
        try:
            if self.version is CgroupVersion.V2:
                self._create_v2(values)
            else:
                for path in self._distinct():
                    path.mkdir(parents=True, exist_ok=True)
                for name, value in values.values(CgroupVersion.V1):
                    _write(self.directory(name.split(".", 1)[0]) / name, value)
        except OSError as exc:
            self.remove()
            raise CgroupError(f"cannot create the cgroup of VM {self.vm_id}: {_describe(exc)}") from exc

    def _create_v2(self, values: CgroupLimits) -> None:
        path = self.directory("memory")
        root = self.hier.root("memory")
        # Controllers are enabled level by level, from the root down to our parent.
        enable = " ".join(f"+{name}" for name in CONTROLLERS)
        for level in (root, root / limits.CGROUP_PARENT):
            level.mkdir(exist_ok=True)
            _write(level / "cgroup.subtree_control", enable)
        path.mkdir(exist_ok=True)
        for name, value in values.values(CgroupVersion.V2):
            _write(path / name, value)

    def jailer_args(self, values: CgroupLimits) -> list[str]:
        """What tells Firecracker's jailer to make this cgroup with ``values`` and join it."""
        pairs = values.values(self.version)
        if self.version is CgroupVersion.V1:
            # The jailer on v1 fails without them; all of the host's CPUs and memory nodes.
            cpuset = self.hier.root("cpuset")
            pairs += [
                ("cpuset.mems", _read(cpuset / "cpuset.mems")),
                ("cpuset.cpus", _read(cpuset / "cpuset.cpus")),
            ]
        args = ["--cgroup-version", str(int(self.version)), "--parent-cgroup", limits.CGROUP_PARENT]
        for name, value in pairs:
            args += ["--cgroup", f"{name}={value}"]
        return args

    def wrap(self, argv: list[str]) -> list[str]:
        """``argv`` started inside this cgroup: a shell writes its own PID into the cgroup, then execs
        ``argv`` (the same process: the VMM is in its cgroup before its first instruction, so all its
        memory is charged there). Not a pre-exec hook: that makes Python fork() a threaded server
        (gRPC's threads), where the child can crash before it execs."""
        program = shutil.which(argv[0])
        if program is None:  # said here as spawn says it, not as a shell's "not found" later
            raise VmmStartError(f"cannot run {argv[0]}: No such file or directory")
        procs = [str(path / "cgroup.procs") for path in self._distinct()]
        return ["/bin/sh", "-c", _JOIN_AND_EXEC, "clawpot-cgroup", *procs, "--", program, *argv[1:]]

    # -- reading it --------------------------------------------------------------------------------

    def pids(self) -> set[int]:
        found: set[int] = set()
        for path in self.directories.values():
            with contextlib.suppress(OSError, ValueError):
                found.update(int(p) for p in (path / "cgroup.procs").read_text().split())
        return found

    def memory_limit_mib(self) -> int | None:
        name = "memory.max" if self.version is CgroupVersion.V2 else "memory.limit_in_bytes"
        with contextlib.suppress(OSError, ValueError):
            return int(_read(self.directory("memory") / name)) // MIB
        return None

    def oom_kills(self) -> int:
        """How many processes the kernel killed in this cgroup for going over its memory limit."""
        path = self.directory("memory")
        source = path / ("memory.events" if self.version is CgroupVersion.V2 else "memory.oom_control")
        try:
            text = source.read_text()
        except OSError:
            return 0
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill" and value.strip().isdigit():
                return int(value)
        return 0

    def explain(self, info: ExitInfo) -> ExitInfo:
        """``info``, said as what it was when the memory limit killed the VMM (read before ``remove``)."""
        if self.oom_kills() == 0:
            return info
        limit = self.memory_limit_mib()
        said = f"cgroup limit {limit} MiB" if limit is not None else "cgroup limit"
        return ExitInfo(info.returncode, info.signal, f"out of memory ({said}): {info.reason}")

    # -- taking it down ----------------------------------------------------------------------------

    def kill(self) -> None:
        """SIGKILL every process in the cgroup (VMMs nobody tracks any more: only they are in it)."""
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def remove(self, attempts: int = 1) -> bool:
        """Remove every directory of the cgroup (missing ones are fine); True when none is left.
        ``attempts`` > 1 retries EBUSY (a VMM just reaped: the kernel may still be finishing its exit)."""
        left = False
        for path in self.directories.values():
            for attempt in range(attempts):
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY or attempt == attempts - 1:
                        log.warning("cannot remove cgroup %s: %s", path, _describe(exc))
                        left = True
                        break
                    time.sleep(limits.CGROUP_REMOVE_INTERVAL)
        return not left

    def finish(self, on_exit: Callable[[int], ExitInfo]) -> Callable[[int], ExitInfo]:
        """Wrap a spawned VMM's exit explanation: say when its memory limit killed it, then remove the
        cgroup (the VMM is reaped: the cgroup is empty)."""

        def explained(returncode: int) -> ExitInfo:
            info = self.explain(on_exit(returncode))
            self.remove(attempts=limits.CGROUP_REMOVE_ATTEMPTS)
            return info

        return explained


# $1.. up to "--": the cgroup.procs files to join; then the command. A failure says which file, on
# stderr (the VMM's log), and exits 125 before anything runs.
_JOIN_AND_EXEC = """
while [ "$1" != -- ]; do
    echo $$ > "$1" || { echo "clawpot: cannot join the VM's cgroup ($1)" >&2; exit 125; }
    shift
done
shift
exec "$@"
"""


def cgroup_paths(vm_id: str) -> dict[str, Path]:
    """A VM's cgroup directories that exist now, by controller (v2: one directory under every name):
    where its VMM's CPU (``cpu.stat``, ``cpuacct.usage``) and memory (``memory.current``,
    ``memory.usage_in_bytes``) are read."""
    try:
        directories = VmCgroup(vm_id).directories
    except CgroupError:
        return {}
    return {name: path for name, path in directories.items() if path.is_dir()}


def _write(path: Path, value: str) -> None:
    with open(path, "w") as file:
        file.write(value)


def _read(path: Path) -> str:
    return path.read_text().strip()


def _describe(exc: OSError) -> str:
    where = f" ({exc.filename})" if exc.filename else ""
    return f"{exc.strerror or exc}{where}"
