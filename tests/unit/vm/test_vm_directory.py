"""The per-VM directory, unix socket checks and /proc facts (real files, real sockets, real processes)."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from clawpot.vm import procfs
from clawpot.vm.directory import VmDirectory, VmMetadata, find_by_control_socket
from clawpot.vm.errors import SocketPathTooLong, VmError
from clawpot.vm.sockets import MAX_SOCKET_PATH, SocketStatus, check_socket_path, probe_socket, socket_owners


def metadata(vm_id: str, control_socket: str | None) -> VmMetadata:
    return VmMetadata(
        id=vm_id, backend="firecracker", state="Running", vcpus=1, memory_mib=256, kernel="k",
        rootfs="r", boot_args="console=ttyS0", created_at=time.time(), owner_pid=os.getpid(),
        control_socket=control_socket,
    )  # fmt: skip


def test_create_write_read_remove(tmp_path: Path) -> None:
    directory = VmDirectory.create(root=tmp_path / "vms")
    assert directory.exists() and directory.path.parent == tmp_path / "vms"
    assert len(directory.id) == 8
    assert directory.path.stat().st_mode & 0o777 == 0o700
    meta = metadata(directory.id, "/tmp/x.sock")
    directory.write_metadata(meta)
    assert directory.read_metadata() == meta
    assert [p.name for p in directory.path.iterdir()] == ["metadata.json"]  # no temp file left
    directory.remove()
    assert not directory.path.exists()
    directory.remove()  # idempotent


def test_an_existing_directory_is_never_reused(tmp_path: Path) -> None:
    VmDirectory.create("abc", tmp_path)
    with pytest.raises(VmError, match="already exists"):
        VmDirectory.create("abc", tmp_path)


def test_too_deep_for_sockets_fails_before_creating(tmp_path: Path) -> None:
    root = tmp_path / ("d" * 100)
    with pytest.raises(SocketPathTooLong):
        VmDirectory.create(root=root)
    assert not root.exists()


def test_find_by_control_socket(tmp_path: Path) -> None:
    a = VmDirectory.create("a", tmp_path)
    a.write_metadata(metadata("a", "/tmp/a.sock"))
    b = VmDirectory.create("b", tmp_path)
    b.write_metadata(metadata("b", "/tmp/b.sock"))
    VmDirectory.create("c", tmp_path)  # no metadata yet
    found = find_by_control_socket(Path("/tmp/b.sock"), tmp_path)
    assert found is not None and found.id == "b"
    assert find_by_control_socket(Path("/tmp/zzz.sock"), tmp_path) is None
    assert find_by_control_socket(Path("/tmp/a.sock"), tmp_path / "missing") is None


def test_socket_path_limit() -> None:
    check_socket_path(Path("/" + "x" * (MAX_SOCKET_PATH - 1)))
    with pytest.raises(SocketPathTooLong, match="at most 107"):
        check_socket_path(Path("/" + "x" * MAX_SOCKET_PATH))
    with pytest.raises(SocketPathTooLong, match="suffix"):
        check_socket_path(Path("/" + "x" * 90), reserve=20)


def test_probe_live_stale_absent_and_not_a_socket(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    assert probe_socket(path) is SocketStatus.ABSENT
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen()
    try:
        assert probe_socket(path) is SocketStatus.LIVE
        assert socket_owners(path) == [os.getpid()]
    finally:
        server.close()
    # Closed without unlinking: exactly what a crashed VMM leaves behind.
    assert path.exists()
    assert probe_socket(path) is SocketStatus.STALE
    assert socket_owners(path) == []
    regular = tmp_path / "file"
    regular.write_text("x")
    assert probe_socket(regular) is SocketStatus.NOT_A_SOCKET


def test_procfs_follows_one_process_not_a_pid() -> None:
    child = subprocess.Popen(["sleep", "30"])
    try:
        ticks = procfs.start_ticks(child.pid)
        assert ticks is not None
        assert procfs.is_alive(child.pid, ticks)
        assert not procfs.is_alive(child.pid, ticks + 1)  # a different process with the same PID
        assert procfs.command_name(child.pid) == "sleep"
        uptime = procfs.uptime_of(child.pid)
        assert uptime is not None and uptime >= 0
        child.kill()
        # A zombie is not alive.
        while procfs.start_ticks(child.pid) is not None and procfs.is_alive(child.pid):
            time.sleep(0.01)
        assert not procfs.is_alive(child.pid)
    finally:
        child.kill()
        child.wait()
    assert procfs.start_ticks(child.pid) is None
    assert procfs.command_name(child.pid) is None
