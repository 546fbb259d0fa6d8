"""What every VMM backend does the same way when it spawns its process."""

from __future__ import annotations

import ctypes
import signal
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> Callable[[], None]:
    """A preexec hook: the kernel SIGKILLs the VMM if its parent dies without stopping it (no orphans).

    Used by one-VM launchers (the driver, tests). The server does not use it: its VMs outlive a server
    restart and are adopted. libc is resolved here, before fork, so the child makes one plain syscall.
    """
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)

    return hook
