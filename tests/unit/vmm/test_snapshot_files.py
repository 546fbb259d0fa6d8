"""Snapshot files without a VMM: atomic writing, the manifest, verification, sparse copies, digests.

The backends' own snapshots are proven on real VMs (tests/integration/test_snapshot_qemu.py and
test_snapshot_firecracker.py); here the files a backend hands over are plain files written by the test.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from clawpot.vmm.snapshot import (
    MANIFEST_NAME,
    SnapshotCorrupt,
    SnapshotError,
    SnapshotIncompatible,
    SnapshotWriter,
    copy_sparse,
    file_digest,
    open_snapshot,
    spec_entry,
)
from clawpot.vmm.spec import BackendKind, Drive, VmSpec

MIB = 1024 * 1024


@pytest.fixture
def spec(tmp_path: Path) -> VmSpec:
    (tmp_path / "vmlinux").write_bytes(b"kernel")
    (tmp_path / "rootfs.ext4").write_bytes(b"rootfs" * 100)
    vm = tmp_path / "vm"
    vm.mkdir()
    (vm / "scratch.ext4").write_bytes(b"layer")
    return VmSpec(
        kernel=tmp_path / "vmlinux",
        boot_args="console=ttyS0",
        drives=(
            Drive("rootfs", tmp_path / "rootfs.ext4", read_only=True),
            Drive("scratch", vm / "scratch.ext4", read_only=False),
        ),
    )


def write(target: Path, spec: VmSpec, files: dict[str, bytes]) -> None:
    with SnapshotWriter(target) as writer:
        for name, data in files.items():
            writer.path(name).write_bytes(data)
        writer.seal(
            backend=BackendKind.QEMU,
            backend_version="7.2.22",
            spec=spec_entry(spec, {"scratch": "drive-scratch"}),
        )


def test_a_sealed_snapshot_opens_and_names_its_files(tmp_path: Path, spec: VmSpec) -> None:
    target = tmp_path / "snaps" / "one"
    write(target, spec, {"state": b"S" * 100, "memory": b"M", "drive-scratch": b"D"})
    assert sorted(p.name for p in target.parent.iterdir()) == ["one"]  # no partial directory left
    snap = open_snapshot(target, backend=BackendKind.QEMU, backend_version="7.2.22")
    assert set(snap.manifest.files) == {"state", "memory", "drive-scratch"}
    assert snap.manifest.files["state"].size == 100
    assert all(p.stat().st_mode & 0o777 == 0o400 for p in target.iterdir())
    # A restore: the base image in place, the writable layer copied into the new VM directory by name.
    vm_dir = tmp_path / "clone"
    vm_dir.mkdir()
    restored = snap.spec_for(vm_dir)
    assert restored.drives[0].path == tmp_path / "rootfs.ext4"
    assert restored.drives[1].path == vm_dir / "scratch.ext4"
    assert snap.copy_drives(vm_dir) == [vm_dir / "scratch.ext4"]
    assert (vm_dir / "scratch.ext4").read_bytes() == b"D"


def test_a_failure_before_seal_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "snaps" / "two"
    with pytest.raises(RuntimeError), SnapshotWriter(target) as writer:
        writer.path("state").write_bytes(b"partial")
        raise RuntimeError("disk full, say")
    assert list((tmp_path / "snaps").iterdir()) == []


def test_an_existing_snapshot_is_never_overwritten(tmp_path: Path, spec: VmSpec) -> None:
    target = tmp_path / "three"
    write(target, spec, {"state": b"S"})
    with pytest.raises(SnapshotError, match="already exists"):
        SnapshotWriter(target)


@pytest.mark.parametrize(
    ("damage", "error", "message"),
    [
        ("flip", SnapshotCorrupt, "state does not match its digest"),
        ("truncate", SnapshotCorrupt, "state has 99 bytes, the manifest says 100"),
        ("remove", SnapshotCorrupt, "file state is missing"),
        ("manifest", SnapshotCorrupt, "bad manifest.json"),
        ("no-manifest", SnapshotCorrupt, "no manifest.json"),
        ("version", SnapshotIncompatible, "taken with qemu 7.2.22; this host runs 8.0.0"),
        ("backend", SnapshotIncompatible, "taken by qemu, not firecracker"),
        ("kernel", SnapshotIncompatible, "another kernel"),
        ("rootfs", SnapshotIncompatible, "another drive rootfs"),
        ("escape", SnapshotCorrupt, "bad file name"),
    ],
)
def test_damage_is_refused_with_one_line(
    tmp_path: Path, spec: VmSpec, damage: str, error: type[SnapshotError], message: str
) -> None:
    target = tmp_path / "snap"
    write(target, spec, {"state": b"S" * 100})
    state, manifest = target / "state", target / MANIFEST_NAME
    state.chmod(0o600)
    manifest.chmod(0o600)
    backend, version = BackendKind.QEMU, "7.2.22"
    if damage == "flip":
        state.write_bytes(b"S" * 99 + b"T")
    elif damage == "truncate":
        state.write_bytes(b"S" * 99)
    elif damage == "remove":
        state.unlink()
    elif damage == "manifest":
        manifest.write_text(manifest.read_text()[:-20])
    elif damage == "no-manifest":
        manifest.unlink()
    elif damage == "version":
        version = "8.0.0"
    elif damage == "backend":
        backend = BackendKind.FIRECRACKER
    elif damage == "kernel":
        spec.kernel.write_bytes(b"another kernel, longer")
    elif damage == "rootfs":
        spec.drives[0].path.write_bytes(b"x")
    elif damage == "escape":
        data = json.loads(manifest.read_text())
        data["files"]["../outside"] = data["files"].pop("state")
        manifest.write_text(json.dumps(data))
    with pytest.raises(error, match=message) as caught:
        open_snapshot(target, backend=backend, backend_version=version)
    assert "\n" not in str(caught.value)


def test_copies_keep_holes_and_digests_ignore_them(tmp_path: Path) -> None:
    source = tmp_path / "sparse"
    with open(source, "wb") as f:
        f.truncate(64 * MIB)
        f.seek(10 * MIB)
        f.write(b"data" * 1024)
    copy = tmp_path / "copy"
    copy_sparse(source, copy)
    assert copy.read_bytes() == source.read_bytes()
    assert copy.stat().st_blocks * 512 < 1 * MIB  # the holes stayed holes
    # The same content written densely (zeros as data) has the same digest: holes are not content.
    dense = tmp_path / "dense"
    dense.write_bytes(source.read_bytes())
    assert file_digest(dense) == file_digest(source) == file_digest(copy)
    with open(dense, "r+b") as f:
        f.seek(40 * MIB)
        f.write(b"\1")
    assert file_digest(dense) != file_digest(source)
    # Size is part of it: trailing zeros make another file.
    os.truncate(copy, 65 * MIB)
    assert file_digest(copy) != file_digest(source)


def test_a_copy_that_fails_leaves_no_file(tmp_path: Path) -> None:
    target = tmp_path / "exists"
    target.write_bytes(b"")
    with pytest.raises(FileExistsError):
        copy_sparse(tmp_path / "exists", target)  # O_EXCL: never onto another file
    with pytest.raises(FileNotFoundError):
        copy_sparse(tmp_path / "missing", tmp_path / "new")
    assert not (tmp_path / "new").exists()


def test_a_restore_never_copies_over_a_file_already_there(tmp_path: Path, spec: VmSpec) -> None:
    target = tmp_path / "snap"
    write(target, spec, {"state": b"S", "drive-scratch": b"D"})
    snap = open_snapshot(target, backend=BackendKind.QEMU, backend_version="7.2.22")
    vm_dir = tmp_path / "busy"
    vm_dir.mkdir()
    (vm_dir / "scratch.ext4").write_bytes(b"someone else's")
    with pytest.raises(SnapshotError, match="cannot copy the writable layer") as caught:
        snap.copy_drives(vm_dir)
    assert "\n" not in str(caught.value)
    assert (vm_dir / "scratch.ext4").read_bytes() == b"someone else's"


def test_a_hidden_template_is_not_hashed_and_opens_only_in_this_process(
    tmp_path: Path, spec: VmSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    from clawpot.vmm import snapshot as snapshot_module

    target = tmp_path / "snaps" / ".fork-x"
    write(target, spec, {"state": b"S" * 100, "memory": b"M", "drive-scratch": b"D"})
    snap = open_snapshot(target, backend=BackendKind.QEMU, backend_version="7.2.22")
    assert snap.manifest.files["state"].digest != file_digest(target / "state")  # not a content hash
    # Another process (an empty cache of verified files) refuses it: it is not a snapshot to share.
    monkeypatch.setattr(snapshot_module, "_verified", {})
    monkeypatch.setattr(snapshot_module, "_PROCESS_SECRET", "another process")
    with pytest.raises(SnapshotCorrupt, match="does not match its digest"):
        open_snapshot(target, backend=BackendKind.QEMU, backend_version="7.2.22")


def test_a_hidden_template_still_opens_after_its_files_are_granted_to_the_vmm_account(
    tmp_path: Path, spec: VmSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    # QEMU's account is given the RAM file after sealing (a chmod: a new ctime). The writing process must
    # still accept its template; a cache keyed by ctime alone refused every fork and pool restore.
    from clawpot.vmm import snapshot as snapshot_module

    target = tmp_path / "snaps" / ".pool-1x256"
    write(target, spec, {"state": b"S" * 100, "memory": b"M", "drive-scratch": b"D"})
    (target / "memory").chmod(0o460)
    monkeypatch.setattr(snapshot_module, "_verified", {})
    snap = open_snapshot(target, backend=BackendKind.QEMU, backend_version="7.2.22")
    assert set(snap.manifest.files) == {"state", "memory", "drive-scratch"}
