"""The accelerator probe on this host, for real: boots the installed kernel + image under KVM.

What the answer must be depends on the host, so the test checks consistency, plus the one fact known
about kvm_pvm hosts (such as the project's CI machines): stock guests do not boot there, so TCG.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import pytest

from clawpot.paths import DATA_DIR_ENV
from clawpot.vmm import probe, registry
from clawpot.vmm.qemu.cmdline import Accel
from clawpot.vmm.spec import BackendKind


class InstalledAssets(Protocol):  # the part of tests/conftest.py's fixture value used here
    kernel: Path
    rootfs: Path


async def test_probe_decides_and_caches(
    installed_assets: InstalledAssets, qemu_bin: Path, tmp_path: Path
) -> None:
    result = await probe.probe_accelerator(
        installed_assets.kernel, installed_assets.rootfs, data=tmp_path, binary=str(qemu_bin)
    )
    print(f"\naccelerator probe: {result.summary()}")
    assert result.accel is (Accel.KVM if result.kvm_boots_guests else Accel.TCG)
    assert result.kernel_release == probe.kernel_release()
    if result.kvm_provider == "kvm_pvm":
        assert result.accel is Accel.TCG
        assert "KVM is kvm_pvm" in result.detail and "cannot boot stock guests" in result.detail
        assert result.detail.endswith("→ TCG")
    if result.method == "boot":
        # Cached for this host kernel: asking again answers from the file, without booting.
        assert probe.cached_probe(tmp_path) == result
        again = await probe.probe_accelerator(installed_assets.kernel, Path("/nonexistent"), data=tmp_path)
        assert again == result
        assert probe.kvm_boots_guests(tmp_path) is result.kvm_boots_guests
    else:
        assert result.method == "capability" and probe.kvm_device_problem() is not None


async def test_marker_detection_on_a_real_boot(installed_assets: InstalledAssets, qemu_bin: Path) -> None:
    # The positive path, which a kvm_pvm host never takes under KVM: run the same boot under TCG.
    booted, why = await probe.boot_probe(
        installed_assets.kernel, installed_assets.rootfs, accel=Accel.TCG, binary=str(qemu_bin)
    )
    assert booted, why


async def test_probe_of_a_guest_that_dies_early(installed_assets: InstalledAssets, tmp_path: Path) -> None:
    # A root image without /bin/echo: the kernel panics before userland, which is "does not boot".
    empty = tmp_path / "empty.ext4"
    empty.write_bytes(b"\0" * (1 << 20))
    booted, why = await probe.boot_probe(installed_assets.kernel, empty, accel=Accel.TCG, boot_timeout=60)
    assert not booted
    assert why.startswith("guest ended before userland")


async def test_auto_backend_follows_the_probe(
    installed_assets: InstalledAssets, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    result = await probe.probe_accelerator(installed_assets.kernel, installed_assets.rootfs)
    expected = BackendKind.FIRECRACKER if result.kvm_boots_guests else BackendKind.QEMU
    assert registry.resolve("auto") is expected
    assert registry.resolve("qemu") is BackendKind.QEMU
    backend = registry.get_backend("qemu")
    capabilities = backend.capabilities()
    assert capabilities.available and capabilities.boots_guests
    if result.method == "boot":
        assert result.summary() in capabilities.detail
