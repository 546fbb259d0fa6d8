"""The build cache: atomic entries, damaged entries discarded, temporary dirs of dead builds removed."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clawpot.assets.cache import BuildCache


def test_finished_build_becomes_a_verified_entry(tmp_path: Path) -> None:
    cache = BuildCache(tmp_path)
    with cache.building("kernel", "k1") as staging:
        (staging.out / "vmlinux").write_bytes(b"kernel")
        staging.meta["version"] = "6.12"
    entry = cache.lookup_verified("kernel", "k1")
    assert entry is not None and entry.meta == {"version": "6.12"}
    assert entry.file("vmlinux").read_bytes() == b"kernel"
    assert list((tmp_path / "tmp").iterdir()) == []


def test_failed_build_leaves_neither_entry_nor_temp(tmp_path: Path) -> None:
    cache = BuildCache(tmp_path)
    with pytest.raises(RuntimeError), cache.building("kernel", "k1") as staging:
        (staging.out / "vmlinux").write_bytes(b"half")
        raise RuntimeError("make failed")
    assert cache.lookup("kernel", "k1") is None
    assert not (tmp_path / "kernel" / "k1").exists()
    assert list((tmp_path / "tmp").iterdir()) == []


def test_damaged_entry_is_discarded(tmp_path: Path) -> None:
    cache = BuildCache(tmp_path)
    with cache.building("rootfs", "r1") as staging:
        (staging.out / "rootfs.ext4").write_bytes(b"A" * 4096)
    entry = cache.lookup("rootfs", "r1")
    assert entry is not None
    entry.file("rootfs.ext4").write_bytes(b"A" * 4095 + b"B")
    assert entry.verify() == ["rootfs.ext4"]
    assert cache.lookup_verified("rootfs", "r1") is None
    assert not entry.path.exists()


def test_only_dead_builds_are_cleaned(tmp_path: Path) -> None:
    cache = BuildCache(tmp_path)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    dead = tmp / "kernel-dead"
    dead.mkdir()
    (dead / ".lock").touch()
    (dead / "half-built").write_bytes(b"x")
    live = tmp / "kernel-live"
    live.mkdir()
    (live / ".lock").touch()
    # A real other process holds the live build's lock, as a running builder does.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl,sys,time; f=open(sys.argv[1]); fcntl.flock(f, fcntl.LOCK_EX); print(flush=True); "
            "time.sleep(60)",
            str(live / ".lock"),
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None
        holder.stdout.readline()  # the lock is held
        starting = tmp / "kernel-just-created"  # no lock yet: a build that is starting right now
        starting.mkdir()
        assert cache.remove_dead_builds() == [dead]
        assert live.exists() and starting.exists()
    finally:
        holder.kill()
        holder.wait()
    assert sorted(p.name for p in cache.remove_dead_builds()) == ["kernel-live"]
    old = time.time() - 3600
    os.utime(starting, (old, old))
    assert cache.remove_dead_builds() == [starting]
