"""The ``qemu-system-x86_64 -M microvm`` command line for one ``VmSpec``: pure, no I/O.

Everything QEMU needs is on the command line (no QMP configuration phase), so this module is the whole
device model: kernel + command line, virtio-blk drives in spec order, virtio-net on TAPs, the agent
channel (virtio-serial port on a unix-socket chardev, or vhost-vsock), a virtio-rng (python3 in the
guest wants entropy early), the serial console into a FIFO the launcher reads (it writes the capped
file, see ``clawpot.vmm.console``) and QMP on a unix socket.

Guest RAM is always a named memory backend (``-M microvm,memory-backend=mem``), so every VM can be
snapshotted without copying its RAM through the migration stream (``RamBacking``):

- a booted VM: ``memory-backend-memfd,share=on``. An anonymous shared memfd: QEMU's pages are readable
  through ``/proc/PID/fd`` for a snapshot, ``x-ignore-shared`` leaves them out of the stream, and there is
  no file to leak: the memory goes when QEMU goes, however it dies. Measured on a cold TCG boot: the same
  PSS and boot time as anonymous RAM (bench/snapshot.py reports both).
- a restored VM: ``memory-backend-file,share=off`` on the snapshot's ``memory`` file: a private
  copy-on-write mapping, so clones of one snapshot share its page cache and own only what they write.
  The file is never written (0400).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from pathlib import Path

from clawpot import limits
from clawpot.agent.protocol import SERIAL_PORT_NAME
from clawpot.vmm.base import VmmConfigError
from clawpot.vmm.spec import VmSpec

QEMU_BINARY = "qemu-system-x86_64"

# Without these the TCG guest hangs after "Marking TSC unstable" (docs/platform-notes.md §2): TCG's TSC is not
# calibratable, so give the kernel its frequency and loop count instead of measuring them.
TCG_BOOT_ARGS: tuple[str, ...] = ("tsc_early_khz=2000000", "lpj=4000000", "no_timer_check")

# sun_path is 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107
# QEMU ids: a letter, then letters, digits, '-', '.', '_'.
_QEMU_ID = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
_MAC = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")
_TAP = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")


@dataclass(frozen=True)
class RamBacking:
    """Where guest RAM lives: ``None`` path = a shared memfd (booted VMs), else a private mapping of
    that file (restored VMs)."""

    snapshot_memory: Path | None = None

    def object_arg(self, memory_mib: int, mem_path: str | None = None) -> str:
        """``mem_path`` names the snapshot's file another way (a passed fd: ``/proc/self/fd/N``)."""
        if self.snapshot_memory is None:
            return f"memory-backend-memfd,id={RAM_BACKEND_ID},size={memory_mib}M,share=on"
        return (
            f"memory-backend-file,id={RAM_BACKEND_ID},size={memory_mib}M,"
            f"mem-path={mem_path or self.snapshot_memory},share=off"
        )


RAM_BACKEND_ID = "mem"
MEMFD_RAM = RamBacking()


@dataclass(frozen=True)
class PassedFds:
    """What QEMU gets as open fds instead of paths (``confine.Handover`` opens them; QEMU runs in the VM
    directory, so the console FIFOs and ``chroot`` are names relative to it)."""

    qmp: int
    agent: int | None
    # drive id -> the fds of its fd set: (read-only,) or (read-only, read-write)
    drives: dict[str, tuple[int, ...]]
    taps: tuple[int, ...]
    vhost_vsock: int | None
    kernel: int
    memory: int | None
    chroot: str


def _fd_path(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


class Accel(enum.StrEnum):
    KVM = "kvm"
    TCG = "tcg"


@dataclass(frozen=True)
class QemuFiles:
    """The files one QEMU process owns inside its VM directory (short names: sockets have a length cap)."""

    qmp_socket: Path
    agent_socket: Path
    # QEMU's pipe chardev prefix: it writes the console into ``<prefix>.out`` and reads ``<prefix>.in``,
    # two FIFOs the launcher makes; its ``ConsoleWriter`` copies ``.out`` into ``serial_log`` (capped).
    console_pipe: Path
    serial_log: Path
    qemu_log: Path

    @classmethod
    def in_dir(cls, vm_dir: Path, *, qmp_socket: Path | None = None) -> QemuFiles:
        """The standard layout; ``qmp_socket`` pins the QMP socket elsewhere (``clawpot-driver --socket``)."""
        return cls(
            qmp_socket=qmp_socket or vm_dir / "qmp.sock",
            agent_socket=vm_dir / "agent.sock",
            console_pipe=vm_dir / "console",
            serial_log=vm_dir / "console.log",
            qemu_log=vm_dir / "qemu.log",
        )

    @property
    def sockets(self) -> tuple[Path, ...]:
        return (self.qmp_socket, self.agent_socket)

    @property
    def console_fifos(self) -> tuple[Path, Path]:
        """(guest → host, host → guest): ``console.out`` and ``console.in``."""
        name = self.console_pipe.name
        return self.console_pipe.with_name(f"{name}.out"), self.console_pipe.with_name(f"{name}.in")


def kernel_cmdline(boot_args: str, accel: Accel) -> str:
    """The spec's command line plus what the accelerator needs (never duplicating a given option).

    Additions go before a ``--``: the kernel hands everything after it to init as arguments.
    """
    if accel is not Accel.TCG:
        return boot_args
    words = boot_args.split()
    split = words.index("--") if "--" in words else len(words)
    kernel_words, init_words = words[:split], words[split:]
    present = {word.split("=", 1)[0] for word in kernel_words}
    extra = [arg for arg in TCG_BOOT_ARGS if arg.split("=", 1)[0] not in present]
    return " ".join([*kernel_words, *extra, *init_words])


def validate(spec: VmSpec, files: QemuFiles) -> None:
    """Reject what QEMU would reject (or misparse), with one clear line, before anything is spawned."""
    if not spec.kernel.is_file():
        raise VmmConfigError(f"kernel not found: {spec.kernel}")
    if spec.vcpus < 1:
        raise VmmConfigError(f"vcpus must be at least 1, got {spec.vcpus}")
    if spec.memory_mib < 32:
        raise VmmConfigError(f"memory_mib must be at least 32, got {spec.memory_mib}")
    seen: set[str] = set()
    for drive in spec.drives:
        if not _QEMU_ID.match(drive.drive_id):
            raise VmmConfigError(f"drive id {drive.drive_id!r}: use a letter, then letters, digits, -._")
        if drive.drive_id in seen:
            raise VmmConfigError(f"duplicate drive id {drive.drive_id!r}")
        seen.add(drive.drive_id)
        if not drive.path.is_file():
            raise VmmConfigError(f"drive {drive.drive_id}: image not found: {drive.path}")
        # QEMU's -drive syntax splits on ',' (escaped as ',,'); refuse rather than escape, as a comma
        # in an image path is far more likely a mistake than intent.
        if "," in str(drive.path):
            raise VmmConfigError(f"drive {drive.drive_id}: path contains ',': {drive.path}")
    for nic in spec.network_interfaces:
        if not _TAP.match(nic.tap_name):
            raise VmmConfigError(f"invalid TAP device name {nic.tap_name!r}")
        if not _MAC.match(nic.mac):
            raise VmmConfigError(f"invalid MAC address {nic.mac!r}")
    for sock in files.sockets:
        if len(str(sock)) > MAX_SOCKET_PATH:
            raise VmmConfigError(f"socket path too long for a unix socket ({len(str(sock))} bytes): {sock}")
    if any("," in str(p) for p in (spec.kernel, *files.sockets, files.serial_log, files.console_pipe)):
        raise VmmConfigError("kernel and VM directory paths must not contain ','")


def build_command(
    spec: VmSpec,
    files: QemuFiles,
    accel: Accel,
    *,
    binary: str = QEMU_BINARY,
    vsock_cid: int | None = None,
    name: str = "clawpot",
    ram: RamBacking = MEMFD_RAM,
    incoming: bool = False,
    fds: PassedFds | None = None,
) -> list[str]:
    """The argv for ``spec``. With ``vsock_cid`` the agent channel is vhost-vsock, else virtio-serial.
    ``incoming``: wait for a migration stream (``-incoming defer``, then QMP ``migrate-incoming``).
    ``fds``: QEMU gets its sockets, drives, TAPs, kernel and RAM file as open fds, runs in the VM
    directory and chroots (``confine``: an unprivileged QEMU); without, it opens them by path."""
    if ram.snapshot_memory is not None and "," in str(ram.snapshot_memory):
        raise VmmConfigError(f"snapshot path must not contain ',': {ram.snapshot_memory}")
    mem_path = _fd_path(fds.memory) if fds is not None and fds.memory is not None else None
    console = files.console_pipe.name if fds is not None else str(files.console_pipe)
    cmd = [
        binary,
        "-name", name,
        "-M", f"microvm,memory-backend={RAM_BACKEND_ID}",
        "-object", ram.object_arg(spec.memory_mib, mem_path),
        # Under TCG the translation cache is capped (default 1 GiB): the VM's cgroup allows QEMU only
        # the measured overhead beyond guest RAM (limits.QEMU_TCG_TB_SIZE_MIB says why the number).
        "-accel", accel.value if accel is Accel.KVM else f"tcg,tb-size={limits.QEMU_TCG_TB_SIZE_MIB}",
        # KVM: expose the host CPU. TCG: "max" gives the guest the instructions TCG can emulate
        # (the default qemu64 model lacks ones glibc picks at runtime).
        "-cpu", "host" if accel is Accel.KVM else "max",
        "-smp", str(spec.vcpus),
        "-m", f"{spec.memory_mib}M",
        "-nodefaults", "-no-user-config", "-no-reboot",
        "-display", "none",
        # A guest that escapes into QEMU still may not exec, setuid or use obsolete syscalls.
        "-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
        "-kernel", _fd_path(fds.kernel) if fds is not None else str(spec.kernel),
        "-append", kernel_cmdline(spec.boot_args, accel),
        # Console into a FIFO (QEMU opens it read-write, non-blocking): never a file QEMU writes itself.
        "-chardev", f"pipe,id=console,path={console}",
        "-serial", "chardev:console",
        *_qmp_args(files, fds),
        "-object", "rng-random,id=rng0,filename=/dev/urandom",
        "-device", "virtio-rng-device,rng=rng0",
    ]  # fmt: skip
    if fds is not None:
        # After opening everything, QEMU chroots into an empty directory (relative to the VM directory).
        cmd += ["-chroot", fds.chroot]
    # microvm gives virtio-mmio slots to devices in command-line order and the guest probes them in
    # that order, so drives come first to make drives[0] vda, drives[1] vdb, ...
    for set_id, drive in enumerate(spec.drives, start=1):
        opts = [f"if=none,id={drive.drive_id},file={drive.path},format=raw"]
        if fds is not None:
            # QEMU opens a drive read-only first, then read-write for a writable device: one fd of
            # each mode in its fd set. Without image locking: QEMU's locks are OFD locks, and the
            # fd set keeps the read-only description (with the shared lock QEMU took on it) open for
            # QEMU's life, so re-taking the write lock after a snapshot (images inactivated, then
            # activated) fails. Our drives are the VM's own (the base read-only): nobody else opens them.
            for fd in fds.drives[drive.drive_id]:
                cmd += ["-add-fd", f"fd={fd},set={set_id}"]
            opts = [f"if=none,id={drive.drive_id},file=/dev/fdset/{set_id},format=raw,file.locking=off"]
        opts.append("readonly=on" if drive.read_only else "discard=unmap")
        cmd += ["-drive", ",".join(opts), "-device", f"virtio-blk-device,drive={drive.drive_id}"]
    for index, nic in enumerate(spec.network_interfaces):
        netdev = f"net{index}"
        tap = f"fd={fds.taps[index]}" if fds is not None else f"ifname={nic.tap_name},script=no,downscript=no"
        cmd += [
            "-netdev", f"tap,id={netdev},{tap}",
            "-device", f"virtio-net-device,netdev={netdev},mac={nic.mac}",
        ]  # fmt: skip
    if spec.agent_channel:
        if vsock_cid is not None:
            vhost = f",vhostfd={fds.vhost_vsock}" if fds is not None and fds.vhost_vsock is not None else ""
            cmd += ["-device", f"vhost-vsock-device,guest-cid={vsock_cid}{vhost}"]
        else:
            agent = (
                f"fd={fds.agent}"
                if fds is not None and fds.agent is not None
                else f"path={files.agent_socket}"
            )
            cmd += [
                "-chardev", f"socket,id=agent,{agent},server=on,wait=off",
                "-device", "virtio-serial-device",
                "-device", f"virtserialport,chardev=agent,name={SERIAL_PORT_NAME}",
            ]  # fmt: skip
    if incoming:
        # QEMU 7.2 sets x-ignore-shared over QMP only, so the stream is started later over QMP; -S keeps
        # the guest stopped once it is loaded, until the restore recipe says cont.
        cmd += ["-incoming", "defer", "-S"]
    return cmd


def _qmp_args(files: QemuFiles, fds: PassedFds | None) -> list[str]:
    if fds is None:
        return ["-qmp", f"unix:{files.qmp_socket},server=on,wait=off"]
    return ["-chardev", f"socket,id=qmp,fd={fds.qmp},server=on,wait=off", "-mon", "chardev=qmp,mode=control"]
