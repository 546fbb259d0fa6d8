"""QemuBackend's choices, without starting anything: binary, accelerator override, agent transport."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from clawpot.agent_client.endpoints import SerialSocketEndpoint, VsockEndpoint
from clawpot.vmm.base import VmmConfigError, VmmStartError, VmmUnsupported
from clawpot.vmm.qemu.backend import ACCEL_ENV, QemuBackend
from clawpot.vmm.qemu.cmdline import Accel
from clawpot.vmm.registry import BackendOptions, get_backend
from clawpot.vmm.spec import Drive, VmSpec

# Any executable stands in for the binary: prepare() only builds the command line.
SOME_BINARY = shutil.which("true") or "/bin/true"


@pytest.fixture
def spec(tmp_path: Path) -> VmSpec:
    (tmp_path / "vmlinux").write_bytes(b"\0")
    (tmp_path / "rootfs.ext4").write_bytes(b"\0")
    return VmSpec(tmp_path / "vmlinux", "console=ttyS0", (Drive("root", tmp_path / "rootfs.ext4", True),))


def test_virtio_serial_agent_without_vhost_vsock(spec: VmSpec, tmp_path: Path) -> None:
    process = QemuBackend(SOME_BINARY, accel=Accel.TCG, vsock=False).prepare(spec, tmp_path / "vm")
    assert process.agent_endpoint == SerialSocketEndpoint(tmp_path / "vm" / "agent.sock")
    assert process.command[0] == SOME_BINARY


def test_vhost_vsock_agent_gets_a_cid_per_vm(spec: VmSpec, tmp_path: Path) -> None:
    backend = QemuBackend(SOME_BINARY, accel=Accel.KVM, vsock=True)
    first, second = backend.prepare(spec, tmp_path / "a"), backend.prepare(spec, tmp_path / "b")
    assert isinstance(first.agent_endpoint, VsockEndpoint) and isinstance(
        second.agent_endpoint, VsockEndpoint
    )
    assert first.agent_endpoint.cid >= 3 and first.agent_endpoint.cid != second.agent_endpoint.cid
    assert f"vhost-vsock-device,guest-cid={first.agent_endpoint.cid}" in first.command


def test_accelerator_override_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ACCEL_ENV, "TCG")
    assert QemuBackend(SOME_BINARY).accel is Accel.TCG
    assert QemuBackend(SOME_BINARY, accel=Accel.KVM).accel is Accel.KVM  # explicit wins
    monkeypatch.setenv(ACCEL_ENV, "hvf")
    with pytest.raises(VmmConfigError, match=f"{ACCEL_ENV}='hvf': expected kvm or tcg"):
        QemuBackend(SOME_BINARY)


def test_unprobed_accelerator_is_chosen_at_start(spec: VmSpec, tmp_path: Path) -> None:
    process = QemuBackend(SOME_BINARY, data=tmp_path).prepare(spec, tmp_path / "vm")
    assert process.accel is None
    with pytest.raises(VmmStartError, match="chosen when the VM starts"):
        _ = process.command


def test_missing_binary_is_unavailable_not_a_crash(spec: VmSpec, tmp_path: Path) -> None:
    backend = QemuBackend(tmp_path / "no-such-qemu", accel=Accel.TCG)
    capabilities = backend.capabilities()
    assert not capabilities.available and "no-such-qemu not found" in capabilities.detail
    with pytest.raises(VmmUnsupported, match="qemu-system-x86"):
        backend.prepare(spec, tmp_path / "vm")


def test_registry_hook_pins_the_control_socket(spec: VmSpec, tmp_path: Path) -> None:
    options = BackendOptions(binary=Path(SOME_BINARY), control_socket=tmp_path / "ctl.sock")
    backend = get_backend("qemu", options)
    assert isinstance(backend, QemuBackend)
    backend.accel = Accel.TCG
    process = backend.prepare(spec, tmp_path / "vm")
    assert process.control_socket == tmp_path / "ctl.sock"
    assert f"unix:{tmp_path / 'ctl.sock'},server=on,wait=off" in process.command


def test_a_vm_needs_its_root_drive(tmp_path: Path) -> None:
    empty = VmSpec(tmp_path / "vmlinux", "console=ttyS0", ())
    with pytest.raises(VmmConfigError, match="root drive"):
        QemuBackend(SOME_BINARY, accel=Accel.TCG).prepare(empty, tmp_path / "vm")
