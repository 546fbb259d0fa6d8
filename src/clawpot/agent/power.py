"""Power the guest off cleanly: sync, remount filesystems read-only (sysrq 'u' for hidden ones), reboot(2).

The VMMs run guests so that a reboot ends the VM (Firecracker exits; QEMU runs with -no-reboot), and
reboot works on both where power-off does not. All of this is guarded: it only ever runs when the agent
was started with ``--guest`` *and* is PID 1 or a child of PID 1 (tini), so the agent run on a host for
tests can never reboot that host.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import select
import time
from typing import Any

log = logging.getLogger(__name__)

RB_AUTOBOOT = 0x01234567
MS_RDONLY = 1
MS_REMOUNT = 32

# Filesystems without a disk behind them: nothing to make consistent.
_VIRTUAL_FS = frozenset(
    {
        "proc",
        "sysfs",
        "devtmpfs",
        "devpts",
        "tmpfs",
        "ramfs",
        "cgroup",
        "cgroup2",
        "mqueue",
        "debugfs",
        "tracefs",
        "securityfs",
        "pstore",
        "bpf",
        "hugetlbfs",
        "configfs",
        "fusectl",
        "binfmt_misc",
        "autofs",
        "rpc_pipefs",
        "nsfs",
    }
)


def may_power_off(guest_flag: bool, pid: int | None = None, ppid: int | None = None) -> bool:
    """Only the guest's agent, started by the init (PID 1, or tini as PID 1 and its parent)."""
    pid = os.getpid() if pid is None else pid
    ppid = os.getppid() if ppid is None else ppid
    return guest_flag and (pid == 1 or ppid == 1)


def _libc() -> Any:
    return ctypes.CDLL(None, use_errno=True)


def _mount_points() -> list[tuple[str, str]]:
    """(mount point, fs type), deepest last as listed by the kernel."""
    points = []
    with contextlib.suppress(OSError), open("/proc/self/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) >= 3:
                # /proc/mounts escapes spaces and the like as octal (\040).
                target = fields[1].encode().decode("unicode_escape")
                points.append((target, fields[2]))
    return points


def remount_read_only() -> None:
    libc = _libc()
    for target, fstype in reversed(_mount_points()):
        if fstype in _VIRTUAL_FS:
            continue
        if libc.mount(None, target.encode(), None, MS_REMOUNT | MS_RDONLY, None) != 0:
            err = ctypes.get_errno()
            log.warning("remount %s (%s) read-only failed: %s", target, fstype, os.strerror(err))


def emergency_remount_read_only(timeout: float = 5.0) -> bool:
    """sysrq 'u': remount every block-device filesystem read-only, including those no path reaches.

    The overlay's upper layer is mounted before the init's switch_root and hidden after it, so only this
    reaches it. The kernel does it in the background and logs "Emergency Remount complete": wait for that.
    """
    try:
        kmsg: int | None = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        kmsg = None
    try:
        if kmsg is not None:
            os.lseek(kmsg, 0, os.SEEK_END)  # only records logged from now on
        try:
            with open("/proc/sysrq-trigger", "w") as trigger:
                trigger.write("u")
        except OSError as exc:
            log.warning("emergency remount unavailable: %s", exc)
            return False
        if kmsg is None:
            time.sleep(1.0)
            return True
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            if not select.select([kmsg], [], [], remaining)[0]:
                break
            try:
                record = os.read(kmsg, 8192)  # one log record per read
            except (BlockingIOError, BrokenPipeError):  # EPIPE: records were overwritten, read on
                continue
            if b"Emergency Remount complete" in record:
                return True
        log.warning("emergency remount did not complete within %.0f s", timeout)
        return False
    finally:
        if kmsg is not None:
            os.close(kmsg)


def power_off(guest_flag: bool) -> None:
    """Sync, remount read-only, reboot. Returns only if refused (not a guest) or reboot(2) failed."""
    if not may_power_off(guest_flag):
        log.error("refusing to power off: not running as the guest agent (--guest, child of PID 1)")
        return
    log.info("powering off: sync, remount read-only, reboot")
    os.sync()
    remount_read_only()
    os.sync()
    emergency_remount_read_only()
    libc = _libc()
    if libc.reboot(RB_AUTOBOOT) != 0:
        log.error("reboot(2) failed: %s", os.strerror(ctypes.get_errno()))
