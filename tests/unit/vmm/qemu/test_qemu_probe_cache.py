"""The accelerator probe's cache and cheap host checks (the boot: tests/integration/test_qemu_probe.py)."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

from clawpot.vmm import probe
from clawpot.vmm.qemu.cmdline import Accel


def _sample(release: str | None = None) -> probe.AccelProbe:
    return probe.AccelProbe(
        accel=Accel.TCG,
        kvm_boots_guests=False,
        kvm_provider="kvm_pvm",
        detail="KVM is kvm_pvm (runs only PVM-enlightened guests) and cannot boot stock guests (x) → TCG",
        kernel_release=release or probe.kernel_release(),
        method="boot",
        duration_s=0.1,
        probed_at=time.time(),
    )


def test_json_round_trip() -> None:
    sample = _sample()
    assert probe.AccelProbe.from_json(sample.to_json()) == sample
    assert sample.summary().startswith("TCG: KVM is kvm_pvm")


def test_cache_is_keyed_by_host_kernel_release(tmp_path: Path) -> None:
    path = probe.probe_cache_path(tmp_path)
    assert probe.cached_probe(tmp_path) is None
    sample = _sample()
    path.write_text(sample.to_json())
    assert probe.cached_probe(tmp_path) == sample
    # A different host kernel means a different KVM: the old answer no longer counts.
    path.write_text(_sample("0.0.0-another-kernel").to_json())
    assert probe.cached_probe(tmp_path) is None


def test_corrupt_cache_is_ignored(tmp_path: Path) -> None:
    probe.probe_cache_path(tmp_path).write_text("{not json")
    assert probe.cached_probe(tmp_path) is None
    probe.probe_cache_path(tmp_path).write_text('{"accel": "tcg"}')
    assert probe.cached_probe(tmp_path) is None


def test_cached_answer_is_the_answer(tmp_path: Path) -> None:
    # No assets in tmp_path, so nothing could be booted: both answers can only come from the cache.
    says_kvm = dataclasses.replace(_sample(), accel=Accel.KVM, kvm_boots_guests=True)
    probe.probe_cache_path(tmp_path).write_text(says_kvm.to_json())
    assert probe.kvm_boots_guests(tmp_path) is True
    probe.probe_cache_path(tmp_path).write_text(_sample().to_json())
    assert probe.kvm_boots_guests(tmp_path) is False


def test_kvm_provider_from_loaded_modules(tmp_path: Path) -> None:
    assert probe.kvm_provider(tmp_path) is None
    (tmp_path / "kvm").mkdir()
    (tmp_path / "kvm_pvm").mkdir()
    assert probe.kvm_provider(tmp_path) == "kvm_pvm"
    assert "PVM-enlightened" in probe.describe_provider("kvm_pvm")
    assert probe.describe_provider(None) == "an unknown KVM module"


def test_kvm_device_problem(tmp_path: Path) -> None:
    missing = probe.kvm_device_problem(tmp_path / "kvm")
    assert missing is not None and missing.startswith(f"no {tmp_path / 'kvm'}")
    plain = tmp_path / "plain"
    plain.write_text("")
    assert probe.kvm_device_problem(plain) is None  # openable read-write: usable as far as this check goes
    if os.geteuid() != 0:
        plain.chmod(0)
        assert "not accessible" in (probe.kvm_device_problem(plain) or "")
