"""Validation runs before anything is created: each problem is one clear line, nothing is left behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from clawpot.vm import validation
from clawpot.vm.config import VmConfig
from clawpot.vm.errors import VmValidationError
from clawpot.vmm.base import Capabilities
from clawpot.vmm.spec import BackendKind


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(b"\x7fELF\x02\x01\x01" + bytes(57))
    rootfs = tmp_path / "rootfs.ext4"
    rootfs.write_bytes(bytes(4096))
    return kernel, rootfs


def check(config: VmConfig, tmp_path: Path, **kwargs: object) -> list[str]:
    before = sorted(tmp_path.rglob("*"))
    found = validation.problems(config, vms_root=tmp_path / "vms", **kwargs)  # type: ignore[arg-type]
    assert sorted(tmp_path.rglob("*")) == before, "validation must not create anything"
    assert all("\n" not in line for line in found)
    return found


def test_a_good_config_has_no_problems(files: tuple[Path, Path], tmp_path: Path) -> None:
    kernel, rootfs = files
    assert check(VmConfig(kernel, rootfs), tmp_path, control_socket=tmp_path / "fc.sock") == []


@pytest.mark.parametrize(("vcpus", "ok"), [(0, False), (1, True), (32, True), (33, False), (-1, False)])
def test_vcpus_between_1_and_32(files: tuple[Path, Path], tmp_path: Path, vcpus: int, ok: bool) -> None:
    found = check(VmConfig(*files, vcpus=vcpus), tmp_path)
    assert found == ([] if ok else [f"vcpus must be between 1 and 32, got {vcpus}"])


def test_memory_too_small(files: tuple[Path, Path], tmp_path: Path) -> None:
    assert check(VmConfig(*files, memory_mib=0), tmp_path) == ["memory must be at least 64 MiB, got 0 MiB"]


def test_memory_beyond_the_host(files: tuple[Path, Path], tmp_path: Path) -> None:
    available = validation.host_available_mib()
    assert available is not None
    [line] = check(VmConfig(*files, memory_mib=available + 1024), tmp_path)
    assert line.startswith(f"memory of {available + 1024} MiB exceeds the host's available memory")


def test_kernel_missing(files: tuple[Path, Path], tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    assert check(VmConfig(missing, files[1]), tmp_path) == [f"kernel {missing} does not exist"]


def test_kernel_not_elf(files: tuple[Path, Path], tmp_path: Path) -> None:
    bzimage = tmp_path / "bzImage"
    bzimage.write_bytes(b"MZ" + bytes(100))
    [line] = check(VmConfig(bzimage, files[1]), tmp_path)
    assert line.startswith(f"kernel {bzimage} is not an ELF image")


def test_kernel_32_bit(files: tuple[Path, Path], tmp_path: Path) -> None:
    elf32 = tmp_path / "vmlinux32"
    elf32.write_bytes(b"\x7fELF\x01" + bytes(60))
    assert check(VmConfig(elf32, files[1]), tmp_path) == [
        f"kernel {elf32} is a 32-bit ELF; a 64-bit vmlinux is needed"
    ]


def test_kernel_is_a_directory(files: tuple[Path, Path], tmp_path: Path) -> None:
    assert check(VmConfig(tmp_path, files[1]), tmp_path) == [f"kernel {tmp_path} is not a file"]


def test_rootfs_missing(files: tuple[Path, Path], tmp_path: Path) -> None:
    missing = tmp_path / "missing.ext4"
    assert check(VmConfig(files[0], missing), tmp_path) == [f"rootfs {missing} does not exist"]


def test_rootfs_unreadable(files: tuple[Path, Path], tmp_path: Path) -> None:
    # Root reads any file regardless of mode bits; /proc/self/mem is a regular file whose first byte
    # cannot be read by anyone (EIO), so it shows the unreadable case even when the tests run as root.
    unreadable = Path("/proc/self/mem")
    [line] = check(VmConfig(files[0], unreadable), tmp_path)
    assert line.startswith(f"rootfs {unreadable} cannot be read: ")


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    found = check(VmConfig(tmp_path / "k", tmp_path / "r", vcpus=0, memory_mib=1), tmp_path)
    assert len(found) == 4


def test_socket_directory_must_exist_and_be_a_directory(files: tuple[Path, Path], tmp_path: Path) -> None:
    config = VmConfig(*files)
    assert check(config, tmp_path, control_socket=tmp_path / "no" / "fc.sock") == [
        f"socket directory {tmp_path / 'no'} does not exist"
    ]
    a_file = files[1]
    assert check(config, tmp_path, control_socket=a_file / "fc.sock") == [
        f"socket directory {a_file} is not a directory"
    ]


def test_socket_path_too_long(files: tuple[Path, Path], tmp_path: Path) -> None:
    long_socket = tmp_path / ("s" * 120)
    [line] = check(VmConfig(*files), tmp_path, control_socket=long_socket)
    assert "unix sockets allow at most 107" in line


def test_vm_root_too_deep_for_sockets(files: tuple[Path, Path], tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 90)
    found = validation.problems(VmConfig(*files), vms_root=deep)
    assert len(found) == 1 and "unix sockets allow at most 107" in found[0]


def test_vm_root_under_a_file(files: tuple[Path, Path], tmp_path: Path) -> None:
    found = validation.problems(VmConfig(*files), vms_root=files[1] / "vms")
    assert found == [f"{files[1]} is not a directory"]


def test_unavailable_backend_is_a_problem(files: tuple[Path, Path], tmp_path: Path) -> None:
    caps = Capabilities(BackendKind.FIRECRACKER, available=False, detail="firecracker not found")
    assert check(VmConfig(*files), tmp_path, capabilities=caps) == [
        "firecracker cannot run here: firecracker not found"
    ]


def test_validate_raises_with_all_lines(tmp_path: Path) -> None:
    with pytest.raises(VmValidationError) as info:
        validation.validate(VmConfig(tmp_path / "k", tmp_path / "r"), vms_root=tmp_path)
    assert info.value.problems == (
        f"kernel {tmp_path / 'k'} does not exist",
        f"rootfs {tmp_path / 'r'} does not exist",
    )
