"""The unprivileged account every VMM runs as (defence in depth: a VMM escape is not root).

The jailer drops Firecracker to this uid/gid; QEMU is started as it. ``scripts/bootstrap.sh`` creates it
(a system user with no home and no login shell); ``vmm_account()`` finds it, or says how to create it.
"""

from __future__ import annotations

import pwd
from dataclasses import dataclass

from clawpot.vmm.base import VmmConfigError

VMM_USER = "clawpot-vmm"


@dataclass(frozen=True)
class VmmAccount:
    name: str
    uid: int
    gid: int


def vmm_account(name: str = VMM_USER) -> VmmAccount:
    """The VMM account's ids; a clear ``VmmConfigError`` when it does not exist."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise VmmConfigError(
            f"user {name!r} does not exist: run scripts/bootstrap.sh, or "
            f"useradd --system --no-create-home --shell /usr/sbin/nologin {name}"
        ) from None
    return VmmAccount(name=name, uid=entry.pw_uid, gid=entry.pw_gid)
