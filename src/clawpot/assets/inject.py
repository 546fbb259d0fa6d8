"""Put the Clawpot init and agent into an existing ext4 image without mounting it (debugfs -w).

Idempotent: every file is replaced, directories are created only when missing. Afterwards each file is
read back from the image and compared, because debugfs reports most errors only as text on stderr.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import tempfile
from pathlib import Path, PurePosixPath

from clawpot.assets.errors import InjectError
from clawpot.assets.hashing import require_tool
from clawpot.assets.payload import AGENT_ROOT, Payload, all_dirs, build_payload

_FAST_LINK = re.compile(r'Fast link dest: "([^"]*)"')
_TYPE = re.compile(r"Type: (\w+)")
_MODE = re.compile(r"Mode:\s+0?([0-7]+)")


def _debugfs(image: Path, request: str, *, write: bool = False) -> subprocess.CompletedProcess[str]:
    debugfs = require_tool("debugfs", "e2fsprogs")
    argv = [debugfs, *(["-w"] if write else []), "-R", request, str(image)]
    return subprocess.run(argv, capture_output=True, text=True, errors="replace", check=False)


def _stat(image: Path, path: PurePosixPath) -> str | None:
    proc = _debugfs(image, f'stat "{path}"')
    return proc.stdout if proc.returncode == 0 and "Inode:" in proc.stdout else None


def resolve(image: Path, path: PurePosixPath) -> PurePosixPath:
    """``path`` with symlinks in its directories resolved (debugfs does not follow them, e.g. /sbin)."""
    resolved = PurePosixPath("/")
    for part in path.parts[1:]:
        candidate = resolved / part
        for _ in range(16):
            info = _stat(image, candidate)
            if info is None or (m := _TYPE.search(info)) is None or m.group(1) != "symlink":
                break
            link = _FAST_LINK.search(info)
            if link is None:
                raise InjectError(f"{candidate} in {image} is a long symlink; cannot resolve it")
            target = PurePosixPath(link.group(1))
            candidate = target if target.is_absolute() else candidate.parent / target
        else:
            raise InjectError(f"too many symlinks resolving {path} in {image}")
        resolved = candidate
    return resolved


def inject(image: Path, payload: Payload | None = None) -> list[PurePosixPath]:
    """Write ``payload`` (default: the init and the installed agent) into ``image``; return the paths."""
    if not image.is_file():
        raise InjectError(f"{image}: no such file")
    with open(image, "rb") as f:
        f.seek(0x438)
        if f.read(2) != b"\x53\xef":  # the ext2/3/4 superblock magic
            raise InjectError(f"{image} is not an ext4 image")
    payload = payload or build_payload()
    commands: list[str] = []
    for directory in all_dirs(payload):
        real = resolve(image, directory)
        if _stat(image, real) is None:
            commands.append(f'mkdir "{real}"')
    # Files left by an older agent would still be importable: remove what the payload no longer has.
    wanted = {resolve(image, f.path) for f in payload.files}
    for directory in {f.path.parent for f in payload.files if AGENT_ROOT in f.path.parents}:
        real_dir = resolve(image, directory)
        for name, mode in _list(image, real_dir):
            if mode & 0o170000 == 0o100000 and real_dir / name not in wanted:
                commands.append(f'rm "{real_dir / name}"')
    written: list[tuple[PurePosixPath, bytes, int]] = []
    with tempfile.TemporaryDirectory(prefix="clawpot-inject-") as tmp:
        for i, guest_file in enumerate(payload.files):
            local = Path(tmp) / str(i)
            local.write_bytes(guest_file.data)
            real = resolve(image, guest_file.path)
            commands += [
                f'rm "{real}"',
                f'write "{local}" "{real}"',
                f'sif "{real}" mode 0{0o100000 | guest_file.mode:o}',
                f'sif "{real}" uid 0',
                f'sif "{real}" gid 0',
            ]
            written.append((real, guest_file.data, guest_file.mode))
        script = Path(tmp) / "commands"
        script.write_text("\n".join(commands) + "\n")
        debugfs = require_tool("debugfs", "e2fsprogs")
        proc = subprocess.run(
            [debugfs, "-w", "-f", str(script), str(image)],
            capture_output=True,
            text=True,
            errors="replace",
            check=False,
        )
        if proc.returncode != 0:
            raise InjectError(f"debugfs failed on {image}: {proc.stderr.strip()[-500:]}")
    for real, data, mode in written:
        _check_written(image, real, data, mode)
    return [real for real, _, _ in written]


def _list(image: Path, directory: PurePosixPath) -> list[tuple[str, int]]:
    """(name, mode) of the entries of ``directory`` in ``image``; empty if it does not exist."""
    proc = _debugfs(image, f'ls -p "{directory}"')
    entries = []
    for line in proc.stdout.splitlines():
        # /inode/mode/uid/gid/name/size/
        fields = line.split("/")
        if len(fields) >= 7 and fields[5] not in (".", ".."):
            entries.append((fields[5], int(fields[2], 8)))
    return entries


def _check_written(image: Path, path: PurePosixPath, data: bytes, mode: int) -> None:
    debugfs = require_tool("debugfs", "e2fsprogs")
    got = subprocess.run(
        [debugfs, "-R", f'cat "{path}"', str(image)], capture_output=True, check=False
    ).stdout
    if hashlib.sha256(got).digest() != hashlib.sha256(data).digest():
        raise InjectError(f"writing {path} into {image} failed (image full or damaged?)")
    info = _stat(image, path) or ""
    m = _MODE.search(info)
    if m is None or int(m.group(1), 8) & 0o7777 != mode:
        raise InjectError(f"could not set the mode of {path} in {image}")


def has_python(image: Path) -> bool:
    return _stat(image, resolve(image, PurePosixPath("/usr/bin/python3"))) is not None
