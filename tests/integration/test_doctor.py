"""`clawpot doctor` on this host: real tools, real installed assets, the real (cached) KVM probe."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from clawpot.assets.install import InstalledAssets

CLAWPOT = Path(sys.executable).with_name("clawpot")


def _doctor(*args: str) -> tuple[int, dict[str, object]]:
    proc = subprocess.run(
        [str(CLAWPOT), "doctor", "-o", "json", *args], capture_output=True, text=True, timeout=120
    )
    return proc.returncode, json.loads(proc.stdout)


def test_doctor_reports_a_healthy_host_and_the_backend_auto_picks(
    root_required: None, installed_assets: InstalledAssets, qemu_bin: Path
) -> None:
    code, report = _doctor("--data-dir", str(installed_assets.kernel.parent.parent))
    checks = {c["name"]: c for c in report["checks"]}  # type: ignore[union-attr]
    print(json.dumps(report, indent=1))
    assert code == 0 and report["healthy"] is True
    assert checks["asset vmlinux"]["ok"] and checks["asset rootfs.ext4"]["ok"]
    accel = checks["accelerator"]
    assert accel["ok"] and "--vmm auto uses" in accel["detail"]
    account = checks["VMM account clawpot-vmm"]
    assert account["ok"] and "QEMU runs as it" in account["detail"]


def test_doctor_fails_without_assets_and_creates_nothing(tmp_path: Path) -> None:
    data = tmp_path / "empty"
    code, report = _doctor("--data-dir", str(data))
    checks = {c["name"]: c for c in report["checks"]}  # type: ignore[union-attr]
    assert code == 1 and report["healthy"] is False
    assert not checks["asset vmlinux"]["ok"] and "missing" in checks["asset vmlinux"]["detail"]
    assert "accelerator" not in checks  # nothing to probe with
    assert not data.exists()
