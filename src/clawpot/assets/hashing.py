"""sha256 of files and of build inputs.

Hashing is cheap here (hashlib uses the CPU's SHA extensions: ~1.5 GB/s), so installed files are always
verified in full rather than trusted by size and mtime.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def copy_and_hash(src: BinaryIO, dst: BinaryIO) -> str:
    """Copy ``src`` to ``dst`` and return the sha256 of what was written, in a single pass."""
    digest = hashlib.sha256()
    while chunk := src.read(_CHUNK):
        digest.update(chunk)
        dst.write(chunk)
    return digest.hexdigest()


def inputs_key(parts: Iterable[tuple[str, bytes | str]]) -> str:
    """Hash of named build inputs. Names and lengths are hashed too, so no two input lists collide."""
    digest = hashlib.sha256()
    for name, value in parts:
        data = value.encode() if isinstance(value, str) else value
        for field in (name.encode(), data):
            digest.update(len(field).to_bytes(8, "little"))
            digest.update(field)
    return digest.hexdigest()


def tree_inputs(root: Path, pattern: str) -> list[tuple[str, bytes]]:
    """(relative path, content) of every file under ``root`` matching ``pattern``, in a stable order."""
    return [
        (path.relative_to(root).as_posix(), path.read_bytes())
        for path in sorted(root.rglob(pattern))
        if path.is_file() and "__pycache__" not in path.parts
    ]


def require_tool(name: str, package: str) -> str:
    """Absolute path of host program ``name``; a clear error naming the Debian package otherwise."""
    from clawpot.assets.errors import MissingToolError

    found = shutil.which(name)
    if found is None:
        raise MissingToolError(f"{name} not found: install the Debian package {package}")
    return found
