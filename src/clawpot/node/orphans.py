"""VMM processes and VM directories nobody tracks any more (a server died mid-create, a row was lost).

A VM's VMM processes are found three ways, each tied to that VM alone, so nothing else can be hit:
- in the VM's own cgroup (it holds the VMM and nothing else: a jailed firecracker's command line names
  only paths inside its chroot);
- a VMM whose command line names a file in the VM directory;
- a VMM whose working or root directory lies in it (an unprivileged QEMU is handed its files as fds,
  runs in the VM directory and chroots into an empty directory there: ``clawpot.vmm.qemu.confine``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
from pathlib import Path

from clawpot import limits
from clawpot.vm.directory import read_metadata
from clawpot.vmm.adopted import kill_pid
from clawpot.vmm.cgroups import CgroupError, VmCgroup

log = logging.getLogger(__name__)


async def remove_orphan_dir(path: Path) -> None:
    """A VM directory no row owns: kill its VMM if it still runs, remove it and the VM's cgroup."""
    await kill_vmm_of(path)
    log.info("removing orphan VM directory %s", path)
    await asyncio.to_thread(shutil.rmtree, path, True)
    await asyncio.to_thread(remove_cgroup_of, path)


def remove_cgroup_of(vm_dir: Path) -> None:
    """The cgroup of the VM in ``vm_dir`` (named by its id), once nothing runs in it any more."""
    with contextlib.suppress(CgroupError):
        VmCgroup(vm_dir.name).remove(attempts=limits.CGROUP_REMOVE_ATTEMPTS)


_VMM_NAMES = ("qemu-system-", "firecracker", "jailer")


async def kill_vmm_of(vm_dir: Path) -> None:
    """Kill any VMM still running on ``vm_dir``: the processes in its cgroup, the PID its metadata
    names, and VMM processes that use the directory (command line, working or root directory; the
    metadata may predate the VMM). The last two are checked against the directory's path, so no other
    process can be hit."""
    for pid in await asyncio.to_thread(_vmm_pids_using, vm_dir):
        log.info("killing VMM process %d left running on %s", pid, vm_dir)
        with contextlib.suppress(OSError):
            await kill_pid(pid)


def _vmm_pids_using(vm_dir: Path) -> set[int]:
    # A VM's cgroup holds its VMM and nothing else, whatever its command line says (a jailed
    # firecracker's names only paths inside its chroot).
    found: set[int] = set()
    with contextlib.suppress(CgroupError):
        found |= VmCgroup(vm_dir.name).pids()
    marker = str(vm_dir).encode() + b"/"
    metadata = read_metadata(vm_dir / "metadata.json")
    if metadata is not None and metadata.vmm_pid is not None and _uses(metadata.vmm_pid, vm_dir, marker):
        found.add(metadata.vmm_pid)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        argv = _cmdline(int(entry.name))
        program = Path(argv.split(b"\0", 1)[0].decode(errors="replace")).name
        if program.startswith(_VMM_NAMES) and _uses(int(entry.name), vm_dir, marker, argv):
            found.add(int(entry.name))
    return found


def _uses(pid: int, vm_dir: Path, marker: bytes, argv: bytes | None = None) -> bool:
    """``pid`` names a file of ``vm_dir`` on its command line, or works or is chrooted inside it."""
    if marker in (argv if argv is not None else _cmdline(pid)):
        return True
    for link in ("cwd", "root"):
        with contextlib.suppress(OSError):
            target = Path(os.readlink(f"/proc/{pid}/{link}"))
            if target == vm_dir or vm_dir in target.parents:
                return True
    return False


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""
