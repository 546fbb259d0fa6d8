"""Restore recipes read as the restore, and the Firecracker snapshot API bodies are Firecracker's."""

from __future__ import annotations

from pathlib import Path

from clawpot.vmm.firecracker import models
from clawpot.vmm.firecracker.boot import FIRECRACKER_RESTORE
from clawpot.vmm.firecracker.snapshots import supports_network_overrides
from clawpot.vmm.qemu.boot import QEMU_RESTORE


def test_qemu_restore_is_the_boot_with_verify_copy_load_and_cont() -> None:
    assert QEMU_RESTORE.names == (
        "verify the snapshot",
        "copy the writable layer",
        "validate",
        "choose the accelerator",
        "prepare files",
        "build the command line",
        "create the cgroup",
        "spawn qemu",
        "load the snapshot",
        "resume the guest",
        "wait until QMP says running",
    )
    # Every copy is taken back when a later step fails.
    assert QEMU_RESTORE["copy the writable layer"].undo is not None


def test_firecracker_restore_swaps_the_configuration_for_a_load() -> None:
    assert FIRECRACKER_RESTORE.names == (
        "verify the snapshot",
        "copy the writable layer",
        "prepare files",
        "create the cgroup",
        "spawn firecracker",
        "wait for the API",
        "load the snapshot",
        "resume the guest",
    )


def test_snapshot_bodies() -> None:
    create = models.SnapshotCreate(snapshot_path=Path("/s/state"), mem_file_path=Path("/s/memory"))
    assert create.body() == {
        "snapshot_type": "Full",
        "snapshot_path": "/s/state",
        "mem_file_path": "/s/memory",
    }
    load = models.SnapshotLoad(
        snapshot_path=Path("/s/state"),
        mem_backend=models.MemBackend(
            backend_type=models.MemBackendType.FILE, backend_path=Path("/s/memory")
        ),
        resume_vm=False,
        network_overrides=(models.NetworkOverride(iface_id="eth0", host_dev_name="cp-tap9"),),
    )
    assert load.body() == {
        "snapshot_path": "/s/state",
        "mem_backend": {"backend_type": "File", "backend_path": "/s/memory"},
        "resume_vm": False,
        "network_overrides": [{"iface_id": "eth0", "host_dev_name": "cp-tap9"}],
    }
    assert models.Vm(state=models.VmStateChange.PAUSED).body() == {"state": "Paused"}


def test_network_overrides_from_firecracker_1_12() -> None:
    assert supports_network_overrides("1.12.1") and supports_network_overrides("1.16.0")
    assert not supports_network_overrides("1.11.0") and not supports_network_overrides("garbage")
