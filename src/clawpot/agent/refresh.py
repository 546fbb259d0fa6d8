"""What a copy of a VM must not share with its original: the kernel RNG's state and a stopped clock.

A VM restored from a snapshot (a clone, a fork, a pool VM) wakes up with the snapshotted kernel's RNG
state, identical in every copy, and with its wall clock where it stood when the snapshot was taken. The
host sends fresh entropy and its own time through ``configure``; these two functions apply them.

Entropy goes in through the ``RNDADDENTROPY`` ioctl, which credits it (root in the guest), then
``RNDRESEEDCRNG`` makes the kernel's CRNG reseed from it at once rather than at its next scheduled
reseed: from then on every read of /dev/urandom or getrandom(2) in either copy depends on its own host
bytes. Without CAP_SYS_ADMIN (a test agent in a user namespace) the bytes are written to /dev/urandom
instead: mixed in, not credited, no forced reseed; ``add_entropy`` says which happened.
"""

from __future__ import annotations

import fcntl
import os
import struct
import time

# <linux/random.h>: _IOW('R', 0x03, int[2]) and _IO('R', 0x07).
RNDADDENTROPY = 0x40085203
RNDRESEEDCRNG = 0x5207
_URANDOM = "/dev/urandom"


def add_entropy(data: bytes, device: str = _URANDOM) -> bool:
    """Add ``data`` to the kernel's RNG and reseed it; True when credited and reseeded (the ioctls),
    False when it could only be written (mixed in). OSError when neither was possible."""
    fd = os.open(device, os.O_WRONLY | os.O_CLOEXEC)
    try:
        # struct rand_pool_info { int entropy_count (bits); int buf_size (bytes); __u32 buf[]; }
        info = struct.pack("ii", len(data) * 8, len(data)) + data
        try:
            fcntl.ioctl(fd, RNDADDENTROPY, info)
            fcntl.ioctl(fd, RNDRESEEDCRNG)
        except PermissionError:
            os.write(fd, data)
            return False
        return True
    finally:
        os.close(fd)


def step_clock(clock_ns: int) -> int:
    """Step CLOCK_REALTIME to ``clock_ns``; returns the clock read back right after (ns)."""
    time.clock_settime_ns(time.CLOCK_REALTIME, clock_ns)
    return time.clock_gettime_ns(time.CLOCK_REALTIME)
