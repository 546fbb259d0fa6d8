"""The configuration file ``FirecrackerVmm`` boots from: every part of the spec, in Firecracker's format."""

from __future__ import annotations

import json
from pathlib import Path

from clawpot.vmm.firecracker.handle import GUEST_CID, FirecrackerVmm
from clawpot.vmm.spec import Drive, NetworkInterface, VmSpec


def spec(tmp_path: Path, *, agent: bool = True) -> VmSpec:
    return VmSpec(
        kernel=tmp_path / "vmlinux",
        boot_args="console=ttyS0 root=/dev/vda",
        drives=(
            Drive("rootfs", tmp_path / "rootfs.ext4", read_only=True),
            Drive("scratch", tmp_path / "s.ext4", read_only=False),
        ),
        vcpus=2,
        memory_mib=512,
        network_interfaces=(NetworkInterface(tap_name="cp-tap0", mac="06:00:c0:a8:64:02"),),
        agent_channel=agent,
    )


def test_the_file_describes_the_whole_vm(tmp_path: Path) -> None:
    vm_dir = tmp_path / "vm"
    vm_dir.mkdir()
    vmm = FirecrackerVmm(Path("/nonexistent/firecracker"), spec(tmp_path), vm_dir)
    body = vmm.config().body()
    assert body == {
        "boot-source": {"kernel_image_path": str(tmp_path / "vmlinux"),
                        "boot_args": "console=ttyS0 root=/dev/vda"},
        "drives": [
            # None is the root device: the boot args say root=, and Firecracker would add a second one.
            {"drive_id": "rootfs", "path_on_host": str(tmp_path / "rootfs.ext4"), "is_root_device": False,
             "is_read_only": True},
            {"drive_id": "scratch", "path_on_host": str(tmp_path / "s.ext4"), "is_root_device": False,
             "is_read_only": False},
        ],
        "machine-config": {"vcpu_count": 2, "mem_size_mib": 512},
        "network-interfaces": [
            {"iface_id": "eth0", "host_dev_name": "cp-tap0", "guest_mac": "06:00:c0:a8:64:02"}
        ],
        # The VM's own files by name: firecracker runs in its directory, so a snapshot restored into
        # another directory reopens that directory's files, never these.
        "vsock": {"guest_cid": GUEST_CID, "uds_path": "vsock.sock"},
        # Never a file: a FIFO the launcher reads, bounded (clawpot.vmm.firecracker.metrics).
        "metrics": {"metrics_path": "metrics.fifo"},
    }  # fmt: skip
    assert vmm.process.argv()[:3] == ["env", "-C", str(vm_dir)]
    assert vmm.process.argv()[-2:] == ["--config-file", str(vm_dir / "firecracker.json")]
    assert "--api-sock" in vmm.process.argv()  # the API stays on for everything after the start


def test_no_vsock_without_an_agent_channel(tmp_path: Path) -> None:
    vmm = FirecrackerVmm(Path("/nonexistent/firecracker"), spec(tmp_path, agent=False), tmp_path)
    assert "vsock" not in vmm.config().body()


def test_written_file_is_that_json(tmp_path: Path) -> None:
    vmm = FirecrackerVmm(Path("/nonexistent/firecracker"), spec(tmp_path), tmp_path)
    vmm.write_config()
    assert json.loads((tmp_path / "firecracker.json").read_text()) == vmm.config().body()
    assert vmm.config().body()["metrics"] == {"metrics_path": "metrics.fifo"}  # the FIFO, by name
