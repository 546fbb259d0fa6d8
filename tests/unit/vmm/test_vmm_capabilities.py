"""Capability flags: an operation a backend cannot do fails before it begins, naming what is missing."""

from __future__ import annotations

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


def test_backends_offer_no_features_yet() -> None:
    from clawpot.vmm.firecracker.backend import FirecrackerBackend
    from clawpot.vmm.qemu.backend import QemuBackend

    assert FirecrackerBackend(None).capabilities().features == NO_FEATURES
    assert QemuBackend(None).capabilities().features == NO_FEATURES
