"""Hashing, atomic replacement and the manifest: the pieces that make installs safe to interrupt."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from clawpot.assets.atomic import atomic_copy, atomic_write_bytes, remove_stale_temps, temp_name
from clawpot.assets.hashing import inputs_key, sha256_file, tree_inputs
from clawpot.assets.manifest import AssetRecord, Manifest, State, check_file


def test_inputs_key_depends_on_names_values_and_boundaries() -> None:
    base = inputs_key([("a", "xy"), ("b", b"z")])
    assert base == inputs_key([("a", b"xy"), ("b", "z")])  # str and bytes of the same text agree
    assert base != inputs_key([("a", "x"), ("b", "yz")])  # moving a boundary changes the key
    assert base != inputs_key([("b", "z"), ("a", "xy")])  # order matters
    assert base != inputs_key([("a", "xy"), ("c", "z")])


def test_tree_inputs_ignores_bytecode_and_is_sorted(tmp_path: Path) -> None:
    (tmp_path / "pkg" / "__pycache__").mkdir(parents=True)
    (tmp_path / "pkg" / "b.py").write_text("b")
    (tmp_path / "pkg" / "a.py").write_text("a")
    (tmp_path / "pkg" / "__pycache__" / "a.py").write_text("stale")
    assert tree_inputs(tmp_path, "*.py") == [("pkg/a.py", b"a"), ("pkg/b.py", b"b")]


def test_atomic_copy_returns_the_hash_and_leaves_no_temp(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(os.urandom(3 << 20))
    dest = tmp_path / "dest"
    dest.write_bytes(b"old")
    digest = atomic_copy(src, dest, 0o755)
    assert digest == hashlib.sha256(src.read_bytes()).hexdigest() == sha256_file(dest)
    assert dest.stat().st_mode & 0o777 == 0o755
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest", "src"]


def test_failed_copy_keeps_the_old_file_whole(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.write_bytes(b"old content")
    with pytest.raises(IsADirectoryError):
        atomic_copy(tmp_path, dest)  # reading a directory fails after the temp file was created
    assert dest.read_bytes() == b"old content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest"]


def test_stale_temps_of_a_dead_writer_are_removed(tmp_path: Path) -> None:
    dest = tmp_path / "vmlinux"
    atomic_write_bytes(dest, b"kernel")
    stale = temp_name(dest)
    stale.write_bytes(b"half a kern")  # what a killed install leaves
    assert remove_stale_temps(tmp_path) == [stale]
    assert [p.name for p in tmp_path.iterdir()] == ["vmlinux"]


def _record(path: Path, name: str) -> AssetRecord:
    data = path.read_bytes()
    return AssetRecord(name, "1.0", "test", len(data), hashlib.sha256(data).hexdigest(), "k" * 64)


def test_manifest_round_trip_and_unreadable_manifest_is_empty(tmp_path: Path) -> None:
    (tmp_path / "vmlinux").write_bytes(b"kernel")
    manifest = Manifest({"vmlinux": _record(tmp_path / "vmlinux", "vmlinux")})
    manifest.save(tmp_path)
    assert Manifest.load(tmp_path) == manifest
    (tmp_path / "manifest.json").write_text("{not json")
    assert Manifest.load(tmp_path).assets == {}
    (tmp_path / "manifest.json").write_text('{"format": 99, "assets": {}}')
    assert Manifest.load(tmp_path).assets == {}


def test_check_file_detects_a_single_flipped_byte(tmp_path: Path) -> None:
    path = tmp_path / "rootfs.ext4"
    path.write_bytes(os.urandom(1 << 20))
    record = _record(path, "rootfs.ext4")
    assert check_file(tmp_path, "rootfs.ext4", record).state is State.OK
    with open(path, "r+b") as f:
        f.seek(500_000)
        byte = f.read(1)
        f.seek(500_000)
        f.write(bytes([byte[0] ^ 0x01]))
    check = check_file(tmp_path, "rootfs.ext4", record)
    assert check.state is State.CORRUPT and "sha256" in check.detail


def test_check_file_missing_truncated_and_unrecorded(tmp_path: Path) -> None:
    path = tmp_path / "jailer"
    path.write_bytes(b"12345678")
    record = _record(path, "jailer")
    path.write_bytes(b"1234")
    assert check_file(tmp_path, "jailer", record).state is State.CORRUPT
    path.unlink()
    assert check_file(tmp_path, "jailer", record).state is State.MISSING
    assert check_file(tmp_path, "jailer", None).state is State.MISSING
