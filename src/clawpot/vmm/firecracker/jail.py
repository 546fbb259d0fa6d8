"""Firecracker under its jailer (the default; ``--no-jailer`` runs it bare, for development).

The jailer is Firecracker's own launcher: it makes a chroot, a new mount namespace (pivot_root into
it) and, with ``--new-pid-ns``, a new PID namespace; puts the process in its cgroup (``--cgroup``);
drops to an unprivileged uid/gid (``clawpot-vmm``); then execs firecracker. Firecracker's threat model
assumes it: a guest that escapes into the VMM lands in an empty directory as a user who owns nothing,
in a namespace where it sees no other process, inside CPU, memory and task limits.

The jail of a VM lives inside its directory, so deleting the VM deletes it, and orphan cleanup finds it
like any other VM file::

    <vm dir>/jail/firecracker/<vm id>/root/    the chroot (0700, owned by clawpot-vmm)
        vmlinux, rootfs.ext4                   hard links of the shared assets (never copied; read-only)
        scratch.ext4                           hard link of the VM's writable layer (owned by clawpot-vmm)
        firecracker.json, firecracker.log      hard links of the VM directory's configuration and log
        metrics.fifo                           hard link of the VM directory's metrics FIFO
        firecracker.sock, vsock.sock           bound by firecracker; the VM directory has symbolic links
                                               to them at their usual names (what the server connects to)
        firecracker (a copy the jailer makes), firecracker.pid, dev/kvm, dev/net/tun, ...

Every file is linked at the root under its own name, and the configuration names each file by its
name alone (``FirecrackerVmm._own``): firecracker runs at the root of the chroot, so relative names
resolve there, as they resolve in the VM directory without a jail. Hard links need the assets and the
data directory on one filesystem (the default layout: both under /var/lib/clawpot); a start refuses
otherwise, rather than copy a base image.

The recipe swap (``boot.jailed``), over either recipe (boot and restore)::

    ... → prepare the jail → prepare files → spawn firecracker under the jailer → ...
          undo: kill what is in the cgroup, remove the chroot and the cgroup

The jailer exits as soon as firecracker runs (with ``--new-pid-ns`` it forks firecracker into the new
namespace, writes its host PID to ``firecracker.pid`` in the chroot and exits), so the firecracker we
track is not our child: the server is a child subreaper (``spawn.become_subreaper``), firecracker is
reparented to it, and it is watched, reaped and explained exactly like one we spawned ourselves
(``FirecrackerProcess.watch``). The tracked PID is firecracker's own, the one recorded for adoption.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from clawpot import limits
from clawpot.vmm.account import VmmAccount
from clawpot.vmm.base import VmmStartError
from clawpot.vmm.cgroups import VmCgroup
from clawpot.vmm.console import make_fifo
from clawpot.vmm.logtail import tail_lines
from clawpot.vmm.spawn import become_subreaper, popen

if TYPE_CHECKING:
    from clawpot.vmm.firecracker.handle import FirecrackerVmm

# The line `--no-jailer` prints (clawpot-server, clawpot-driver) so nobody runs it unknowingly.
NO_JAILER_WARNING = (
    "{program}: warning: --no-jailer: Firecracker runs without its jailer (as root, not chrooted, in "
    "the host's PID namespace); for development only"
)
# Under --chroot-base-dir the jailer makes <exec file name>/<id>/root.
JAIL_DIR_NAME = "jail"
# What the jailer (and firecracker's --id) accept as an id: the VM directory's name (VM ids are hex).
_JAIL_ID = re.compile(r"[A-Za-z0-9-]{1,64}")


@dataclass(frozen=True)
class Jail:
    """Where one VM's jail is, and who firecracker runs as in it."""

    jailer: Path
    firecracker: Path
    vm_id: str
    base: Path
    account: VmmAccount

    @classmethod
    def for_vm(cls, jailer: Path, firecracker: Path, vm_dir: Path, account: VmmAccount) -> Jail:
        return cls(jailer, firecracker, vm_dir.name, vm_dir / JAIL_DIR_NAME, account)

    @property
    def root(self) -> Path:
        """The chroot, as the host sees it."""
        return self.base / self.firecracker.name / self.vm_id / "root"

    @property
    def pid_file(self) -> Path:
        """Where the jailer writes firecracker's host PID (with --new-pid-ns)."""
        return self.root / f"{self.firecracker.name}.pid"

    def inside(self, path: Path) -> Path:
        """What firecracker calls a file of its jail: every file is at the root under its name."""
        return Path("/") / path.name

    def argv(self, cgroup_args: list[str], firecracker_args: list[str]) -> list[str]:
        return [
            str(self.jailer),
            "--id", self.vm_id,
            "--exec-file", str(self.firecracker),
            "--uid", str(self.account.uid),
            "--gid", str(self.account.gid),
            "--chroot-base-dir", str(self.base),
            "--new-pid-ns",
            *cgroup_args,
            "--",
            *firecracker_args,
        ]  # fmt: skip

    def remove(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)


def _jail(vmm: FirecrackerVmm) -> Jail:
    if vmm.jail is None:
        raise VmmStartError("this firecracker has no jail")
    return vmm.jail


async def prepare(vmm: FirecrackerVmm) -> None:
    """The chroot with every file the VM needs linked in, owned so that firecracker can use them."""
    jail = _jail(vmm)
    if not _JAIL_ID.fullmatch(jail.vm_id):  # the jailer's own rule, said before it runs
        raise VmmStartError(f"{jail.vm_id!r} cannot name a jail: 1-64 letters, digits and '-'")
    vmm.process.cgroup = VmCgroup(jail.vm_id)
    await asyncio.to_thread(_prepare, vmm, jail)


def _prepare(vmm: FirecrackerVmm, jail: Jail) -> None:
    uid, gid = jail.account.uid, jail.account.gid
    try:
        jail.root.mkdir(mode=0o700, parents=True)
        os.chown(jail.root, uid, gid)
        # The log: created here, in the VM directory, writable for firecracker alone.
        vmm.files.log.touch(mode=0o600)
        os.chown(vmm.files.log, uid, gid)
        own = [vmm.files.log]  # files of this VM that firecracker reads or writes
        shared = [vmm.spec.kernel]  # files of the host it may only read
        if vmm.files.config is not None:
            own.append(vmm.files.config)
        if vmm.files.metrics is not None:  # firecracker opens it by name: it must be in the jail
            make_fifo(vmm.files.metrics)
            own.append(vmm.files.metrics)
        for drive in vmm.spec.drives:
            (shared if drive.read_only else own).append(drive.path)
        if vmm.restore_from is not None:
            shared += [vmm.restore_from.state, vmm.restore_from.memory]
        for path in own:
            os.chown(path, uid, gid)
        for path in shared:
            _check_readable(path, jail.account)
        names: dict[str, Path] = {}
        for path in [*own, *shared]:
            if path.name in names and not names[path.name].samefile(path):
                raise VmmStartError(f"two files named {path.name!r} cannot both go into the jail")
            names[path.name] = path
        for name, path in names.items():
            _link(path, jail.root / name)
        # The sockets firecracker binds at its root, reached from the host through symbolic links at
        # their usual places (a chroot path may not fit a unix socket's 108 bytes; a link's target may).
        for socket in (vmm.files.api_socket, vmm.vsock_path):
            if socket.is_symlink() and not socket.exists():
                socket.unlink()  # a link a crashed jailed firecracker left behind
            socket.symlink_to(jail.root / socket.name)
    except OSError as exc:
        jail.remove()
        where = f" ({exc.filename})" if exc.filename else ""
        raise VmmStartError(f"cannot prepare the jail: {exc.strerror or exc}{where}") from exc
    except BaseException:
        jail.remove()
        raise


def _link(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError as exc:
        if exc.errno == 18:  # EXDEV
            raise VmmStartError(
                f"cannot link {source} into the jail: it is on another filesystem than {target.parent} "
                "(keep the assets and the data directory on one filesystem; nothing is copied)"
            ) from exc
        raise


def _check_readable(path: Path, account: VmmAccount) -> None:
    """A shared file (kernel, base image, snapshot) firecracker must read as ``account``; never chowned:
    other VMs share it."""
    st = path.stat()
    readable = (
        st.st_mode & 0o004
        or (st.st_mode & 0o040 and st.st_gid == account.gid)
        or (st.st_mode & 0o400 and st.st_uid == account.uid)
    )
    if not readable:
        raise VmmStartError(f"{path} is not readable by {account.name} (mode {st.st_mode & 0o777:o})")


async def remove(vmm: FirecrackerVmm) -> None:
    """Undo of the jail: whatever runs in the VM's cgroup is killed, the chroot and the cgroup go."""
    cgroup = vmm.process.cgroup
    if cgroup is not None:
        cgroup.kill()
    vmm.remove_jail()
    vmm.remove_cgroup()


async def launch(vmm: FirecrackerVmm) -> None:
    """Run the jailer; once it has handed over, watch the firecracker it started (by its host PID)."""
    jail = _jail(vmm)
    process = vmm.process
    cgroup = process.cgroup
    assert cgroup is not None, "the jail is prepared first"
    become_subreaper()
    argv = jail.argv(cgroup.jailer_args(vmm.cgroup_limits()), process.args(jail.inside))
    with process.output() as (stdout, stderr):
        jailer = popen(argv, stdout=stdout, stderr=stderr, die_with_parent=process.die_with_parent)
    try:
        returncode = await asyncio.to_thread(jailer.wait, limits.JAILER_TIMEOUT)
    except BaseException as exc:
        jailer.kill()
        await asyncio.to_thread(jailer.wait)
        if isinstance(exc, subprocess.TimeoutExpired):
            raise VmmStartError(f"the jailer did not hand over within {limits.JAILER_TIMEOUT:.0f}s") from exc
        raise
    if returncode != 0:
        raise VmmStartError(f"the jailer failed (exit code {returncode}): {_jailer_error(vmm)}")
    try:
        pid = int(jail.pid_file.read_text().strip())
    except (OSError, ValueError) as exc:
        raise VmmStartError(f"the jailer left no firecracker PID in {jail.pid_file}: {exc}") from exc
    watchdog = _watchdog(cgroup) if process.die_with_parent else None

    def reaped() -> None:
        # Once firecracker is reaped its chroot goes at once (a VM in Error keeps its directory and
        # logs for inspection, not a jail); its cgroup went with the exit explanation (``finish``).
        vmm.remove_jail()
        if watchdog is not None:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                watchdog.communicate(b"done\n", timeout=limits.JAILER_TIMEOUT)

    process.watch(pid, then=reaped)


# What the parent-death signal is for a VMM we exec ourselves (``die_with_parent``: the driver, tests),
# for a jailed firecracker: the jailer's setuid clears that signal. A shell reads a pipe only we hold
# open; when we die the kernel closes it, the read ends, and the shell kills what is in the VM's cgroup
# (only its firecracker) and removes the cgroup. A normal exit tells it "done" first.
_WATCHDOG = """
read -r line
[ "$line" = done ] && exit 0
for d in "$@"; do while read -r p; do kill -9 "$p"; done < "$d/cgroup.procs"; done
for d in "$@"; do i=0; while [ $i -lt 50 ] && ! rmdir "$d" 2>/dev/null; do i=$((i+1)); sleep 0.1; done; done
"""


def _watchdog(cgroup: VmCgroup) -> subprocess.Popen[bytes]:
    # The directories the jailer made (by now it has handed over).
    directories = sorted({str(path) for path in cgroup.directories.values() if path.is_dir()})
    return subprocess.Popen(
        ["sh", "-c", _WATCHDOG, "clawpot-watchdog", *directories],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # a Ctrl+C at the terminal is the driver's to handle, not its
    )


def _jailer_error(vmm: FirecrackerVmm) -> str:
    lines = [line.strip() for line in tail_lines(vmm.files.stderr, limits.FIRECRACKER_LOG_TAIL_BYTES)]
    lines = [line for line in lines if line]
    return lines[-1] if lines else "it printed nothing"
