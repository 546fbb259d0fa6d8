"""VMM processes and VM directories nobody tracks any more (a server died mid-create, a row was lost).

Processes are matched by their command line naming the VM directory, or by their working or root
directory lying in it (an unprivileged QEMU is handed its files as fds, runs in the VM directory and
chroots into an empty directory there: ``clawpot.vmm.qemu.confine``), so nothing else can be hit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
from pathlib import Path

from clawpot.vm.directory import read_metadata
from clawpot.vmm.adopted import kill_pid

log = logging.getLogger(__name__)


async def remove_orphan_dir(path: Path) -> None:
    """A VM directory no row owns: kill its VMM if it still runs, remove it."""
    await kill_vmm_of(path)
    log.info("removing orphan VM directory %s", path)
    await asyncio.to_thread(shutil.rmtree, path, True)


_VMM_NAMES = ("qemu-system-", "firecracker", "jailer")


async def kill_vmm_of(vm_dir: Path) -> None:
    """Kill any VMM still running on ``vm_dir``: the PID its metadata names, and VMM processes whose
    command line names a file in the directory (the metadata may predate the VMM). Both are checked
    against the directory's path, so no other process can be hit."""
    for pid in await asyncio.to_thread(_vmm_pids_using, vm_dir):
        log.info("killing VMM process %d left running on %s", pid, vm_dir)
        with contextlib.suppress(OSError):
            await kill_pid(pid)


def _vmm_pids_using(vm_dir: Path) -> set[int]:
    marker = str(vm_dir).encode() + b"/"
    found = set()
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
