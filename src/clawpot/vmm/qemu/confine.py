"""QEMU without root: it runs as the VMM account (``clawpot-vmm``), chrooted, with its files handed over.

A QEMU escape should land in an unprivileged process that sees nothing. What QEMU 7.2 allows decides
how (measured here, 7.2.22):

- ``-runas USER`` cannot be used: QEMU switches user *after* installing its seccomp filter, and
  ``-sandbox ...,elevateprivileges=deny`` (which we keep) then kills it with SIGSYS at its own
  ``setgid``. (``-run-with user=`` is 9.x and has the same order.)
- So QEMU is started as the account: ``setpriv`` (util-linux) sets the uid, gid and supplementary groups
  and execs QEMU in place (same PID, so the pidfd watching it is unchanged). It keeps one capability,
  CAP_SYS_CHROOT (bounding, inheritable and ambient sets: nothing else, ``--no-new-privs``), so that
  QEMU's own ``-chroot DIR`` works: after it has opened everything, QEMU chroots into an empty
  directory it cannot write, and ``chdir("/")``. No directory fd outside it is left open in QEMU (the
  classic way out of a chroot), and with nothing inside it a retained CAP_SYS_CHROOT has nothing to
  chroot into.
- What QEMU opens is handed over so that its files keep their owner (root) and their modes:
  - the QMP and agent sockets: bound and listening by us, passed as fds (``-chardev socket,fd=N``): the
    server connects to them by path as before, also after a restart;
  - every drive: two fds (read-only and read-write) in a QEMU fd set (``-add-fd`` + ``/dev/fdset/N``):
    QEMU's block layer opens a drive read-only first and again read-write when the guest device
    attaches, and picks the fd of the matching mode;
  - each TAP: opened by us (TUNSETIFF) and passed (``-netdev tap,fd=N``); ``/dev/net/tun`` may be
    0600 root (it is here), so QEMU could not open it itself even for a TAP it owns;
  - vhost-vsock (KVM hosts): ``/dev/vhost-vsock`` opened by us, ``vhostfd=N``;
  - the kernel and a restore's RAM file: a passed fd named as ``/proc/self/fd/N``, so their directories'
    modes do not matter (the files' own still do: the kernel must be readable by the account, and a
    snapshot's RAM file is made group-read-write for it, see ``grant_snapshot_memory``);
  - the serial console FIFOs: QEMU's ``pipe`` chardev opens ``<name>.in`` and ``<name>.out`` by name
    only, so QEMU starts with the VM directory as its working directory (set by us, as root) and names
    them relatively: only the VM directory itself must be searchable by the account (0710, group
    ``clawpot-vmm``), not its parents; the FIFOs belong to the account.
- KVM: QEMU 7.2 opens ``/dev/kvm`` itself and takes no fd for it, so the account needs access: the
  launcher adds ``/dev/kvm``'s group (``kvm`` on Debian, where udev makes it 0660) to QEMU's groups, and
  refuses to start with a one-line fix when the device is not group- or world-accessible.

``Handover`` opens those fds for one start and closes our copies after the spawn.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from dataclasses import dataclass, field
from pathlib import Path

from clawpot.network.tap import open_tap
from clawpot.vmm.account import VmmAccount
from clawpot.vmm.base import VmmConfigError, VmmStartError
from clawpot.vmm.qemu.cmdline import Accel, PassedFds, QemuFiles
from clawpot.vmm.spec import VmSpec

SETPRIV = "setpriv"
KVM_DEVICE = Path("/dev/kvm")
VHOST_VSOCK = Path("/dev/vhost-vsock")
# The empty directory QEMU chroots into, inside the VM directory (root-owned, 0555, never written).
CHROOT_NAME = "chroot"
# The VM directory: root's, searchable (not listable) by the account's group.
VM_DIR_MODE = 0o710
# A snapshot's RAM file: QEMU 7.2 opens mem-path read-write even for a private (copy-on-write)
# mapping (8.1 falls back to read-only), so the account's group may open it read-write. Root only reads
# it; the owner bits are for an operator looking at it.
SNAPSHOT_MEMORY_MODE = 0o460


def launcher(account: VmmAccount, *, groups: tuple[int, ...] = (), die_with_parent: bool) -> list[str]:
    """The ``setpriv`` prefix that execs QEMU as ``account`` with CAP_SYS_CHROOT only.

    The parent-death signal is set by setpriv after the uid change (a change of uid clears one set
    earlier, so the spawn's own preexec hook cannot be used here).
    """
    argv = [
        SETPRIV,
        f"--reuid={account.uid}",
        f"--regid={account.gid}",
        f"--groups={','.join(map(str, groups))}" if groups else "--clear-groups",
        "--inh-caps=-all,+sys_chroot",
        "--ambient-caps=-all,+sys_chroot",
        "--bounding-set=-all,+sys_chroot",
        "--no-new-privs",
    ]
    if die_with_parent:
        argv.append("--pdeathsig=SIGKILL")
    return [*argv, "--"]


def kvm_groups(accel: Accel, account: VmmAccount, device: Path = KVM_DEVICE) -> tuple[int, ...]:
    """The supplementary group QEMU needs for ``/dev/kvm`` (none under TCG, or when it is world rw)."""
    if accel is not Accel.KVM:
        return ()
    try:
        st = os.stat(device)
    except OSError as exc:
        raise VmmConfigError(f"KVM: cannot use {device}: {exc.strerror or exc}") from exc
    if st.st_mode & 0o006 == 0o006:
        return ()
    if st.st_mode & 0o060 == 0o060:
        return (st.st_gid,)
    raise VmmConfigError(
        f"QEMU runs as {account.name}, which cannot open {device} (mode {stat.S_IMODE(st.st_mode):04o}, "
        f"owner {st.st_uid}:{st.st_gid}): make it 0660 root:kvm (Debian's udev rule does), or use TCG"
    )


def prepare_vm_dir(vm_dir: Path, files: QemuFiles, account: VmmAccount) -> None:
    """The VM directory searchable by the account, the console FIFOs its own, the empty chroot."""
    os.chown(vm_dir, -1, account.gid)
    os.chmod(vm_dir, VM_DIR_MODE)
    for fifo in files.console_fifos:
        os.chown(fifo, account.uid, account.gid, follow_symlinks=False)
    empty = vm_dir / CHROOT_NAME
    with contextlib.suppress(FileExistsError):
        empty.mkdir(mode=0o555)
    st = os.lstat(empty)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or any(os.scandir(empty)):
        raise VmmStartError(f"{empty} is not an empty directory of root's; refusing to chroot QEMU there")


def remove_vm_dir_files(vm_dir: Path) -> None:
    with contextlib.suppress(FileNotFoundError, OSError):
        (vm_dir / CHROOT_NAME).rmdir()


def grant_snapshot_memory(memory: Path, account: VmmAccount) -> None:
    """Let the account's QEMU open a snapshot's RAM file (read-write: see ``SNAPSHOT_MEMORY_MODE``).
    Changed only when needed: a chmod changes the file's ctime, which makes the next restore hash it
    again (``clawpot.vmm.snapshot``'s verification cache)."""
    st = os.stat(memory)
    if st.st_gid != account.gid:
        os.chown(memory, -1, account.gid)
    if stat.S_IMODE(st.st_mode) != SNAPSHOT_MEMORY_MODE:
        os.chmod(memory, SNAPSHOT_MEMORY_MODE)


@dataclass
class Handover:
    """The fds one QEMU start gets: opened by ``open``, passed to the spawn, closed by ``close``."""

    fds: PassedFds
    keep: list[int] = field(default_factory=list)

    @classmethod
    def open(
        cls,
        spec: VmSpec,
        files: QemuFiles,
        *,
        vsock: bool,
        snapshot_memory: Path | None,
    ) -> Handover:
        """Bind the sockets and open the drives, TAPs, kernel (and RAM file); on failure close all."""
        keep: list[int] = []
        sockets: list[socket.socket] = []

        def track(fd: int) -> int:
            keep.append(fd)
            return fd

        def listen(path: Path) -> int:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind(str(path))
            sock.listen()
            return track(sock.detach())

        try:
            qmp = listen(files.qmp_socket)
            agent = listen(files.agent_socket) if spec.agent_channel and not vsock else None
            fdsets: dict[str, tuple[int, ...]] = {}
            for drive in spec.drives:
                read_only = track(os.open(drive.path, os.O_RDONLY | os.O_CLOEXEC))
                if drive.read_only:
                    fdsets[drive.drive_id] = (read_only,)
                else:
                    fdsets[drive.drive_id] = (read_only, track(os.open(drive.path, os.O_RDWR | os.O_CLOEXEC)))
            taps = tuple(track(open_tap(nic.tap_name)) for nic in spec.network_interfaces)
            vhost = track(os.open(VHOST_VSOCK, os.O_RDWR | os.O_CLOEXEC)) if vsock else None
            kernel = track(os.open(spec.kernel, os.O_RDONLY | os.O_CLOEXEC))
            memory = (
                track(os.open(snapshot_memory, os.O_RDONLY | os.O_CLOEXEC))
                if snapshot_memory is not None
                else None
            )
        except OSError as exc:
            for fd in keep:
                os.close(fd)
            for sock in sockets:
                sock.close()
            for path in (files.qmp_socket, files.agent_socket):
                path.unlink(missing_ok=True)
            raise VmmStartError(f"cannot open what QEMU needs: {exc}") from exc
        return cls(
            PassedFds(
                qmp=qmp,
                agent=agent,
                drives=fdsets,
                taps=taps,
                vhost_vsock=vhost,
                kernel=kernel,
                memory=memory,
                chroot=CHROOT_NAME,
            ),
            keep,
        )

    def close(self) -> None:
        """Our copies (QEMU has its own once spawned; before, this undoes ``open``)."""
        for fd in self.keep:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.keep = []
