"""Unix socket paths: the sun_path limit, and telling a live socket from a stale leftover.

A VMM that dies leaves its listening sockets on disk; connecting to one is refused (ECONNREFUSED).
A live one accepts, and ``socket_owners`` says which process holds it (via /proc/net/unix inodes).
"""

from __future__ import annotations

import enum
import errno
import os
import socket
import stat
from pathlib import Path

from clawpot.vm.errors import SocketPathTooLong

# sun_path holds 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107


class SocketStatus(enum.StrEnum):
    ABSENT = "absent"
    STALE = "stale"  # a socket file nobody listens on
    LIVE = "live"
    NOT_A_SOCKET = "not a socket"


def check_socket_path(path: Path, reserve: int = 0) -> None:
    """Raise ``SocketPathTooLong`` if ``path`` (plus ``reserve`` bytes of suffix) does not fit sun_path."""
    length = len(os.fsencode(path)) + reserve
    if length > MAX_SOCKET_PATH:
        extra = f" (+{reserve} bytes of suffix)" if reserve else ""
        raise SocketPathTooLong(
            f"socket path {path}{extra} is {length} bytes; unix sockets allow at most {MAX_SOCKET_PATH}"
            " (use a shorter data directory or socket path)"
        )


def probe_socket(path: Path) -> SocketStatus:
    """What is at ``path``; a symbolic link is followed (a jailed firecracker's socket is reached
    through a link into its chroot)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return SocketStatus.ABSENT
    if not stat.S_ISSOCK(mode):
        return SocketStatus.NOT_A_SOCKET
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(2.0)
        try:
            sock.connect(str(path))
        except ConnectionRefusedError:
            return SocketStatus.STALE
        except FileNotFoundError:
            return SocketStatus.ABSENT  # removed between lstat and connect
        except OSError as exc:
            # EAGAIN: the listener's backlog is full, so somebody is listening.
            if exc.errno == errno.EAGAIN:
                return SocketStatus.LIVE
            raise
    return SocketStatus.LIVE


def socket_owners(path: Path) -> list[int]:
    """PIDs holding the listening socket bound at ``path`` (empty if none can be seen).

    /proc/net/unix names a socket by the path its owner bound. A link into a chroot (a jailed
    firecracker's socket) names one bound as "/<name>" by a process whose root is that chroot."""
    wanted = os.path.abspath(path)
    real = os.path.realpath(path)
    owners = _owners_of(_listening_inodes({wanted, real}))
    if real != wanted:
        jail_root = Path(real).parent
        inside = _owners_of(_listening_inodes({"/" + Path(real).name}))
        owners += [pid for pid in inside if _same_dir(Path(f"/proc/{pid}/root"), jail_root)]
    return sorted(set(owners))


def _owners_of(inodes: set[str]) -> list[int]:
    if not inodes:
        return []
    targets = {f"socket:[{inode}]" for inode in inodes}
    owners: list[int] = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fds = list((proc / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) in targets:
                    owners.append(int(proc.name))
                    break
            except OSError:
                continue
    return owners


def _same_dir(a: Path, b: Path) -> bool:
    try:
        x, y = os.stat(a), os.stat(b)
    except OSError:
        return False
    return (x.st_dev, x.st_ino) == (y.st_dev, y.st_ino)


def _listening_inodes(paths: set[str]) -> set[str]:
    """Inodes of the sockets bound at any of ``paths`` (as their owners named them)."""
    inodes: set[str] = set()
    try:
        with open("/proc/net/unix") as table:
            next(table, None)  # header
            for line in table:
                # Num RefCount Protocol Flags Type St Inode [Path]
                fields = line.split(maxsplit=7)
                if len(fields) == 8 and fields[7].rstrip("\n") in paths:
                    inodes.add(fields[6])
    except OSError:
        pass
    return inodes
