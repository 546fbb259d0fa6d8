"""`clawpot-driver start --vmm qemu` in the foreground: Running once the agent answers, status, Ctrl+C.

The driver runs as a real subprocess; SIGINT is what Ctrl+C sends. Afterwards nothing may remain: no
QEMU (checked by PID), no control socket, no VM directory.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Protocol

import pytest

from clawpot.vm import procfs
from clawpot.vmm.probe import cached_probe

READY_DEADLINE = 120.0


class InstalledAssets(Protocol):  # the part of tests/conftest.py's fixture value used here
    kernel: Path
    rootfs: Path


def _driver() -> list[str]:
    found = shutil.which("clawpot-driver", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.skip("clawpot-driver is not installed in this environment (pip install -e .)")
    return [found]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    return data


def _env(data: Path) -> dict[str, str]:
    # The accelerator probe caches its answer in the data directory: keep it in the test's own.
    return os.environ | {"CLAWPOT_DATA_DIR": str(data)}


def test_driver_start_qemu_foreground_then_ctrl_c(
    installed_assets: InstalledAssets, qemu_bin: Path, data_dir: Path, tmp_path: Path
) -> None:
    socket_path = tmp_path / "qmp.sock"
    stderr_path = tmp_path / "driver.stderr"
    argv = [
        *_driver(), "--data-dir", str(data_dir),
        "start", "--vmm", "qemu",
        "--kernel", str(installed_assets.kernel), "--rootfs", str(installed_assets.rootfs),
        "--socket", str(socket_path), "--wait-ready", "--ready-timeout", "90", "--stop-grace", "0.5",
    ]  # fmt: skip
    with open(stderr_path, "w") as stderr:
        driver = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=_env(data_dir),
        )
    try:
        running = None
        deadline = time.monotonic() + READY_DEADLINE
        while time.monotonic() < deadline and driver.poll() is None:
            running = re.search(r"VM (\w+) running: qemu pid (\d+)", stderr_path.read_text())
            if running:
                break
            time.sleep(0.1)
        assert running, f"driver never reported Running:\n{stderr_path.read_text()}"
        vm_id, qemu_pid = running.group(1), int(running.group(2))
        vm_dir = data_dir / "vms" / vm_id
        assert procfs.is_alive(qemu_pid) and vm_dir.is_dir() and socket_path.is_socket()

        status = subprocess.run(
            [*_driver(), "--data-dir", str(data_dir), "status", "--socket", str(socket_path), "--json"],
            capture_output=True,
            text=True,
            env=_env(data_dir),
            timeout=60,
        )
        assert status.returncode == 0, status.stderr
        info = json.loads(status.stdout)
        assert (info["backend"], info["state"], info["vmm_pid"]) == ("qemu", "Running", qemu_pid)
        # The accelerator QEMU really runs on, and the probe's explanation of that choice.
        probe = cached_probe(data_dir)
        assert probe is not None
        assert info["accelerator"] == probe.accel.value
        assert info["accelerator_probe"] == probe.summary()

        driver.send_signal(signal.SIGINT)
        assert driver.wait(timeout=60) == 0, stderr_path.read_text()
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    assert "stopped; socket and VM directory removed" in stderr_path.read_text()
    assert not procfs.is_alive(qemu_pid)
    assert not socket_path.exists()
    assert not vm_dir.exists()
