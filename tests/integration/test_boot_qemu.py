"""Boot proof: the installed kernel + root filesystem reach the agent's ready line under QEMU microvm/TCG.

A direct qemu-system-x86_64 command line (not the clawpot QEMU backend), so this proves the assets
alone: base image attached read-only as vda, a fresh writable layer as vdb (clawpot.overlay=/dev/vdb).
Also: an image that lacks the init and agent boots after ``clawpot assets inject``.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pytest

from clawpot.agent.protocol import READY_LINE
from clawpot.assets.bootargs import guest_cmdline
from clawpot.assets.hashing import sha256_file
from clawpot.assets.inject import inject
from clawpot.assets.scratch import make_scratch_disk

READY_DEADLINE_S = 60.0


class InstalledAssets(Protocol):  # the part of tests/conftest.py's fixture value used here
    kernel: Path
    rootfs: Path


@dataclass(frozen=True)
class Boot:
    serial: str
    layer: Path
    to_init_s: float
    to_ready_s: float


def _wait_for(path: Path, needle: str, deadline: float, proc: subprocess.Popen[bytes]) -> float | None:
    """Monotonic time at which ``needle`` appeared in ``path``; None at the deadline or if proc died."""
    while time.monotonic() < deadline:
        if needle in path.read_text(errors="replace"):
            return time.monotonic()
        if proc.poll() is not None:
            return time.monotonic() if needle in path.read_text(errors="replace") else None
        time.sleep(0.05)
    return None


def boot_until_ready(qemu: Path, kernel: Path, rootfs: Path, work: Path, hostname: str) -> Boot:
    """Boot under TCG until the ready line (fails the test after 60 s), then kill QEMU."""
    work.mkdir(parents=True, exist_ok=True)
    layer = make_scratch_disk(work / "layer.ext4", size_mib=256)
    serial = work / "serial.log"
    serial.touch()
    cmdline = guest_cmdline(overlay_device="/dev/vdb", hostname=hostname, tcg=True)
    argv = [
        str(qemu), "-M", "microvm", "-accel", "tcg", "-cpu", "max", "-m", "256", "-smp", "1",
        "-nodefaults", "-no-user-config", "-no-reboot", "-display", "none",
        "-kernel", str(kernel), "-append", cmdline,
        "-drive", f"id=root,file={rootfs},format=raw,if=none,readonly=on",
        "-device", "virtio-blk-device,drive=root",
        "-drive", f"id=layer,file={layer},format=raw,if=none",
        "-device", "virtio-blk-device,drive=layer",
        "-serial", f"file:{serial}",
    ]  # fmt: skip
    started = time.monotonic()
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = started + READY_DEADLINE_S
        at_init = _wait_for(serial, "Run /sbin/clawpot-init", deadline, proc)
        at_ready = _wait_for(serial, READY_LINE, deadline, proc)
    finally:
        proc.kill()
        proc.wait()
    output = serial.read_text(errors="replace")
    if at_init is None or at_ready is None:
        pytest.fail(f"no {READY_LINE} within {READY_DEADLINE_S:.0f} s; serial console:\n{output[-4000:]}")
    return Boot(output, layer, at_init - started, at_ready - started)


@pytest.fixture(scope="module")
def base_sha(installed_assets: InstalledAssets) -> str:
    return sha256_file(installed_assets.rootfs)


@pytest.fixture(scope="module")
def booted(
    installed_assets: InstalledAssets, qemu_bin: Path, base_sha: str, tmp_path_factory: pytest.TempPathFactory
) -> Boot:
    boot = boot_until_ready(
        qemu_bin,
        installed_assets.kernel,
        installed_assets.rootfs,
        tmp_path_factory.mktemp("boot"),
        "boot-proof",
    )
    print(
        f"\nQEMU microvm/TCG boot of the installed assets: kernel to init {boot.to_init_s:.2f} s, "
        f"agent ready {boot.to_ready_s:.2f} s (from QEMU process start)"
    )
    return boot


def test_boots_to_the_ready_line_within_60_s(booted: Boot) -> None:
    assert "clawpot.overlay=/dev/vdb" in booted.serial  # the kernel got our command line
    assert "root is overlay(/ read-only, /dev/vdb writable)" in booted.serial
    assert any(line.startswith(READY_LINE) for line in booted.serial.splitlines())


def test_writes_went_to_the_layer_not_the_base(
    booted: Boot, installed_assets: InstalledAssets, base_sha: str
) -> None:
    assert sha256_file(installed_assets.rootfs) == base_sha
    # The init wrote /etc/hostname (and synced); it can only be in the overlay's upper directory on the
    # layer disk. QEMU was killed, so replay the layer's journal first.
    subprocess.run(["e2fsck", "-fy", str(booted.layer)], capture_output=True, check=False)
    hostname = subprocess.run(
        ["debugfs", "-R", "cat /upper/etc/hostname", str(booted.layer)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert hostname.strip() == "boot-proof"


def test_an_image_without_init_and_agent_boots_after_inject(
    installed_assets: InstalledAssets, qemu_bin: Path, tmp_path: Path
) -> None:
    image = tmp_path / "user.ext4"
    shutil.copyfile(installed_assets.rootfs, image)
    # Make it an image that never had Clawpot's files (as a user's own ext4 image would be).
    strip = "rm /usr/sbin/clawpot-init\nrm /opt/clawpot/agent/clawpot_agent/__main__.py\n"
    subprocess.run(
        ["debugfs", "-w", "-f", "-", str(image)], input=strip, text=True, capture_output=True, check=True
    )
    listing = subprocess.run(
        ["debugfs", "-R", "ls /usr/sbin", str(image)], capture_output=True, text=True
    ).stdout
    assert "clawpot-init" not in listing

    inject(image)
    boot = boot_until_ready(qemu_bin, installed_assets.kernel, image, tmp_path / "vm", "injected")
    print(f"\nQEMU microvm/TCG boot of an injected image: agent ready {boot.to_ready_s:.2f} s")
    assert "clawpot-init: starting the agent" in boot.serial
