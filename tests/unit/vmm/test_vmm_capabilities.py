"""Capability flags: an operation a backend cannot do fails before it begins, naming what is missing."""

from __future__ import annotations

from pathlib import Path

import pytest

from clawpot.vmm.base import NO_FEATURES, Capabilities, Feature, VmmUnsupported
from clawpot.vmm.spec import BackendKind


def test_require_names_the_missing_feature() -> None:
    caps = Capabilities(BackendKind.QEMU, True, "ok", features=Feature.PAUSE)
    caps.require(Feature.PAUSE, "pause")
    with pytest.raises(VmmUnsupported, match="cannot snapshot: the qemu backend does not support snapshot"):
        caps.require(Feature.SNAPSHOT, "snapshot")
    with pytest.raises(VmmUnsupported, match="does not support snapshot, restore"):
        caps.require(Feature.PAUSE | Feature.SNAPSHOT | Feature.RESTORE, "fork")


def test_an_unavailable_backend_refuses_everything() -> None:
    caps = Capabilities(BackendKind.FIRECRACKER, False, "no /dev/kvm", features=Feature.PAUSE)
    with pytest.raises(VmmUnsupported, match=r"firecracker cannot run here \(no /dev/kvm\)"):
        caps.require(Feature.PAUSE, "pause")


def test_qemu_offers_pause_snapshot_and_restore(tmp_path: Path) -> None:
    from clawpot.vmm.qemu.backend import QemuBackend

    everything = Feature.PAUSE | Feature.SNAPSHOT | Feature.RESTORE
    caps = QemuBackend(data=tmp_path).capabilities()
    if caps.available:  # wherever QEMU is installed: every VM's RAM is a shared memfd
        assert caps.features == everything
    missing = QemuBackend(tmp_path / "no-qemu").capabilities()
    assert not missing.available and missing.features == NO_FEATURES


def test_firecracker_declares_pause_snapshot_restore_where_it_runs(tmp_path: Path) -> None:
    from clawpot.vmm.firecracker.backend import FirecrackerBackend

    caps = FirecrackerBackend(tmp_path / "no-firecracker").capabilities()
    assert not caps.available and caps.features == NO_FEATURES
    fake = tmp_path / "firecracker"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    caps = FirecrackerBackend(fake).capabilities()
    if caps.available:  # a host with /dev/kvm
        assert caps.features == Feature.PAUSE | Feature.SNAPSHOT | Feature.RESTORE
