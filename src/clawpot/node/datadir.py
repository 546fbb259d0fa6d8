"""The node's data directory: one node per directory (an exclusive lock), and the assets it boots."""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from clawpot import paths


class NodeError(Exception):
    """The node cannot start (assets missing, data directory in use by another server, ...)."""


@dataclass(frozen=True)
class Assets:
    kernel: Path
    rootfs: Path
    firecracker: Path

    @classmethod
    def of(cls, data_dir: Path) -> Assets:
        assets = paths.assets_dir(data_dir)
        return cls(assets / "vmlinux", assets / "rootfs.ext4", assets / "firecracker")

    def check(self) -> None:
        missing = [p.name for p in (self.kernel, self.rootfs) if not p.is_file()]
        if missing:
            raise NodeError(
                f"VM assets missing in {self.kernel.parent} ({', '.join(missing)}): "
                "run `clawpot assets install`"
            )


def lock_data_dir(data_dir: Path) -> IO[str]:
    """Hold an exclusive lock on the data directory for the node's lifetime: one node per data dir."""
    lock = open(data_dir / "server.lock", "a+")  # noqa: SIM115 - held open until the node closes
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise NodeError(f"another clawpot-server is using {data_dir}") from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock
