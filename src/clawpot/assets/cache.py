"""The build cache: one directory per built thing, named by the hash of its inputs.

    <cache>/<kind>/<key>/          a finished entry: its files + entry.json (sha256 of each file, metadata)
    <cache>/tmp/<kind>-<key>.<n>/  a build in progress; holds a flock on .lock while its builder lives
    <cache>/logs/<kind>-<key>.log  the log of the last build of that entry

An entry appears only by renaming a finished temporary directory into place, so a reader never sees a
half-built entry. Temporary directories whose lock is free belong to dead builds and are removed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from clawpot.assets.atomic import fsync_dir
from clawpot.assets.hashing import sha256_file

ENTRY_FILE = "entry.json"
_LOCK_FILE = ".lock"
_LOCKLESS_GRACE_S = 60


@dataclass(frozen=True)
class CacheEntry:
    kind: str
    key: str
    path: Path
    files: dict[str, str]  # file name -> sha256
    meta: dict[str, str] = field(default_factory=dict)

    def file(self, name: str) -> Path:
        return self.path / name

    def verify(self) -> list[str]:
        """Names of the files that are missing or whose sha256 differs from the recorded one."""
        bad = []
        for name, expected in self.files.items():
            path = self.file(name)
            if not path.is_file() or sha256_file(path) != expected:
                bad.append(name)
        return bad


@dataclass
class Staging:
    """A build in progress: put outputs in ``out``, scratch files in ``work``.

    Commands of the build must inherit ``hold`` (``pass_fds``): the lock on the build directory.
    """

    path: Path
    out: Path
    work: Path
    hold: tuple[int, ...] = ()
    meta: dict[str, str] = field(default_factory=dict)


class BuildCache:
    def __init__(self, root: Path) -> None:
        self.root = root

    def entry_dir(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def log_path(self, kind: str, key: str) -> Path:
        return self.root / "logs" / f"{kind}-{key[:16]}.log"

    def lookup(self, kind: str, key: str) -> CacheEntry | None:
        path = self.entry_dir(kind, key)
        try:
            record = json.loads((path / ENTRY_FILE).read_text())
        except (OSError, ValueError):
            return None
        return CacheEntry(kind, key, path, dict(record["files"]), dict(record.get("meta", {})))

    def lookup_verified(self, kind: str, key: str) -> CacheEntry | None:
        """The entry if all its files check out; a damaged entry is deleted so it gets rebuilt."""
        entry = self.lookup(kind, key)
        if entry is None:
            return None
        if entry.verify():
            self.discard(kind, key)
            return None
        return entry

    def discard(self, kind: str, key: str) -> None:
        path = self.entry_dir(kind, key)
        if path.exists():
            # Rename first so a crash mid-delete cannot leave a damaged entry under its real name.
            doomed = self._tmp_root() / f"discard-{kind}-{key}.{os.getpid()}"
            os.replace(path, doomed)
            remove_tree(doomed)

    def _tmp_root(self) -> Path:
        tmp = self.root / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        return tmp

    @contextlib.contextmanager
    def building(self, kind: str, key: str) -> Iterator[Staging]:
        """A temporary build directory; on a clean exit its ``out`` becomes the entry ``kind/key``."""
        self.remove_dead_builds()
        path = Path(tempfile.mkdtemp(prefix=f"{kind}-{key[:16]}.", dir=self._tmp_root()))
        lock_fd = os.open(path / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        staging = Staging(path, path / "out", path / "work", (lock_fd,))
        staging.out.mkdir()
        staging.work.mkdir()
        try:
            yield staging
            self._commit(kind, key, staging)
        finally:
            remove_tree(path)
            os.close(lock_fd)

    def _commit(self, kind: str, key: str, staging: Staging) -> None:
        files = {p.name: sha256_file(p) for p in sorted(staging.out.iterdir()) if p.is_file()}
        record = {"kind": kind, "key": key, "files": files, "meta": staging.meta}
        entry_json = staging.out / ENTRY_FILE
        entry_json.write_text(json.dumps(record, indent=2) + "\n")
        for name in [*files, ENTRY_FILE]:
            fd = os.open(staging.out / name, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        final = self.entry_dir(kind, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        self.discard(kind, key)
        try:
            os.rename(staging.out, final)
        except OSError:
            # Another build of the same inputs finished first: keep theirs.
            if self.lookup(kind, key) is None:
                raise
        fsync_dir(final.parent)

    def remove_dead_builds(self) -> list[Path]:
        """Delete temporary build directories whose builder is gone (their lock is free)."""
        removed: list[Path] = []
        tmp = self.root / "tmp"
        if not tmp.is_dir():
            return removed
        for path in tmp.iterdir():
            lock = path / _LOCK_FILE
            try:
                fd = os.open(lock, os.O_RDWR)
            except OSError:
                # No lock yet: either a crash right after mkdtemp or a build that is just starting.
                if time.time() - path.lstat().st_mtime < _LOCKLESS_GRACE_S:
                    continue
                fd = None
            if fd is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live build
                finally:
                    os.close(fd)
            remove_tree(path)
            removed.append(path)
        return removed


def mounts_under(path: Path) -> list[Path]:
    """Mount points at or below ``path``, deepest first (from /proc/self/mountinfo)."""
    root = os.path.realpath(path)
    found = []
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        # Field 5 is the mount point, with spaces and the like octal-escaped.
        point = line.split(" ")[4].encode().decode("unicode_escape")
        if point == root or point.startswith(root + "/"):
            found.append(Path(point))
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def remove_tree(path: Path) -> None:
    """Delete a build directory, never reaching into a mount inside it.

    A build killed hard (mmdebstrap mounts /proc, /sys and parts of /dev in its chroot) can leave
    mounts behind; deleting through them would delete host files. They are ours (they lie inside our
    temporary directory), so they are detached first; if that fails the directory is left in place.
    """
    if not path.exists():
        return
    for point in mounts_under(path):
        subprocess.run(["umount", "--lazy", str(point)], capture_output=True, check=False)
    if mounts_under(path):
        return
    shutil.rmtree(path, ignore_errors=True)
