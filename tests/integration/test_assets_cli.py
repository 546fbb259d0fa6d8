"""`clawpot assets install | status` for real: the real recipes, the real cache, a separate data dir.

The suite's set-up has already run `clawpot assets install`, so the cache holds every entry and an
install into a fresh data directory only copies (about a second). Demonstrates: a second install
rebuilds nothing; a flipped byte in the installed kernel is reported by `status` and repaired by `install`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Protocol

import pytest

CLAWPOT = [sys.executable, "-c", "from clawpot.cli.main import main; main()"]


class InstalledAssets(Protocol):
    kernel: Path


def _clawpot(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLAWPOT, "assets", "--data-dir", str(data), *args], capture_output=True, text=True, timeout=1800
    )


def _states(data: Path) -> dict[str, str]:
    result = _clawpot(data, "status", "--output", "json")
    return {row["name"]: row["state"] for row in json.loads(result.stdout)["assets"]}


def test_install_twice_then_corrupt_and_repair(installed_assets: InstalledAssets, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: a changed agent means rebuilding the root filesystem (chroot)")
    data = tmp_path / "data"
    first = _clawpot(data, "install", "--quiet")
    assert first.returncode == 0, first.stderr
    # Only the root filesystem may be rebuilt here (if the agent changed since the suite's install).
    assert "vmlinux     │ installed │ from cache" in first.stdout, first.stdout

    started = time.monotonic()
    second = _clawpot(data, "install", "--quiet")
    elapsed = time.monotonic() - started
    assert second.returncode == 0, second.stderr
    assert "nothing to do" in second.stdout and "installed" not in second.stdout
    print(f"\nsecond `clawpot assets install`: {elapsed:.2f} s wall (process included)\n{second.stdout}")

    status = _clawpot(data, "status")
    assert status.returncode == 0, status.stdout
    print(status.stdout)

    kernel = data / "assets" / "vmlinux"
    good = kernel.read_bytes()
    with open(kernel, "r+b") as f:
        f.seek(len(good) // 2)
        f.write(bytes([good[len(good) // 2] ^ 0xFF]))
    corrupt = _clawpot(data, "status")
    print(f"after flipping one byte of vmlinux:\n{corrupt.stdout}")
    assert corrupt.returncode == 1
    assert _states(data) == {"vmlinux": "corrupt", "rootfs.ext4": "ok", "firecracker": "ok", "jailer": "ok"}

    repair = _clawpot(data, "install", "--quiet")
    print(f"repair:\n{repair.stdout}")
    assert repair.returncode == 0, repair.stderr
    assert "repaired (corrupt" in repair.stdout and "from cache" in repair.stdout
    assert kernel.read_bytes() == good == installed_assets.kernel.read_bytes()
    assert set(_states(data).values()) == {"ok"}
