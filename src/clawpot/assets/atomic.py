"""Put files in place atomically: a reader sees the old file or the complete new one, never a part.

A file is written under a temporary name in the destination directory, fsynced, renamed over the
destination, and the directory is fsynced so the rename survives a crash.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from clawpot.assets.hashing import copy_and_hash

TMP_MARKER = ".tmp."


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_name(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}{TMP_MARKER}{os.getpid()}")


@contextlib.contextmanager
def _replacing(dest: Path) -> Iterator[Path]:
    tmp = temp_name(dest)
    try:
        yield tmp
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(dest: Path, data: bytes, mode: int = 0o644) -> None:
    with _replacing(dest) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_copy(src: Path, dest: Path, mode: int = 0o644) -> str:
    """Copy ``src`` over ``dest`` atomically; return the sha256 of the bytes written."""
    with _replacing(dest) as tmp, open(src, "rb") as fin:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as fout:
            digest = copy_and_hash(fin, fout)
            fout.flush()
            os.fsync(fout.fileno())
        os.chmod(tmp, mode)
    return digest


def remove_stale_temps(directory: Path) -> list[Path]:
    """Delete temporary files left by an interrupted write. Only call while holding the directory's lock."""
    removed = []
    for path in directory.glob(f".*{TMP_MARKER}*"):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
