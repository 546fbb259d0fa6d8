"""`clawpot-driver` as a user runs it: a real subprocess, the real Firecracker, real signals.

Most tests boot the halting guest (firecracker_helpers) so the VM stays in Running for as long as the
test needs, on any host. Every test checks what is left afterwards: firecracker (by PID), the socket,
the VM directory.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pytest
from firecracker_helpers import (
    process_gone,
    require_available,
    wait_until,
    write_blank_rootfs,
    write_halting_kernel,
)

from clawpot.vm import procfs
from clawpot.vmm.firecracker.backend import FirecrackerBackend, firecracker_version


class InstalledAssets(Protocol):  # the part of tests/conftest.py's fixture value used here
    kernel: Path
    rootfs: Path


RUNNING = re.compile(r"VM (?P<id>\w+) running: firecracker pid (?P<pid>\d+), socket (?P<socket>\S+),")
START_DEADLINE = 60.0
EXIT_DEADLINE = 60.0


def driver_argv() -> list[str]:
    script = Path(sys.executable).parent / "clawpot-driver"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from clawpot.cli.driver import main; main()"]


@dataclass
class Env:
    tmp: Path
    data: Path
    kernel: Path
    rootfs: Path
    firecracker: Path
    socket: Path

    @property
    def vms(self) -> Path:
        return self.data / "vms"

    def vm_dirs(self) -> list[Path]:
        return sorted(self.vms.iterdir()) if self.vms.exists() else []

    def base(self) -> list[str]:
        return [*driver_argv(), "--data-dir", str(self.data)]

    def start_args(self, *extra: str) -> list[str]:
        return [
            *self.base(), "start", "--vmm", "firecracker", "--firecracker", str(self.firecracker),
            "--kernel", str(self.kernel), "--rootfs", str(self.rootfs), "--socket", str(self.socket),
            "--memory", "64", "--stop-grace", "0.5", *extra,
        ]  # fmt: skip

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.base(), *args], capture_output=True, text=True, timeout=timeout, check=False
        )


@dataclass
class Driver:
    """A `clawpot-driver start` in the background, its stderr collected by a thread."""

    proc: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    vm_id: str = ""
    vmm_pid: int = 0
    vmm_ticks: int | None = None

    def __post_init__(self) -> None:
        def read() -> None:
            assert self.proc.stderr is not None
            for line in self.proc.stderr:
                self.lines.append(line.rstrip("\n"))

        self.reader = threading.Thread(target=read, daemon=True)
        self.reader.start()

    @property
    def stderr(self) -> str:
        return "\n".join(self.lines)

    def wait_running(self) -> None:
        def running() -> bool:
            return self.proc.poll() is not None or any(RUNNING.search(line) for line in self.lines)

        assert wait_until(running, START_DEADLINE), f"driver did not report running:\n{self.stderr}"
        match = next((m for line in self.lines if (m := RUNNING.search(line))), None)
        assert match is not None, f"driver exited ({self.proc.returncode}):\n{self.stderr}"
        self.vm_id, self.vmm_pid = match["id"], int(match["pid"])
        self.vmm_ticks = procfs.start_ticks(self.vmm_pid)

    def wait_exit(self) -> int:
        code = self.proc.wait(EXIT_DEADLINE)
        self.reader.join(5)
        return code


@pytest.fixture
def env(tmp_path: Path, firecracker_bin: Path) -> Env:
    require_available(FirecrackerBackend(firecracker_bin).capabilities())
    return Env(
        tmp=tmp_path,
        data=tmp_path / "data",
        kernel=write_halting_kernel(tmp_path / "halt.elf"),
        rootfs=write_blank_rootfs(tmp_path / "blank.img"),
        firecracker=firecracker_bin,
        socket=tmp_path / "fc.sock",
    )


@pytest.fixture
def drivers() -> Iterator[list[Driver]]:
    """Every driver a test starts; killed (and so its firecracker, by parent-death signal) if still up."""
    started: list[Driver] = []
    yield started
    for driver in started:
        if driver.proc.poll() is None:
            driver.proc.kill()
            driver.proc.wait(10)
        if driver.vmm_pid and not process_gone(driver.vmm_pid, driver.vmm_ticks):
            os.kill(driver.vmm_pid, signal.SIGKILL)


def launch(env: Env, drivers: list[Driver], *extra: str, stdout: Path | None = None) -> Driver:
    with open(stdout or os.devnull, "wb") as out:
        proc = subprocess.Popen(env.start_args(*extra), stderr=subprocess.PIPE, stdout=out, text=True)
    driver = Driver(proc)
    drivers.append(driver)
    return driver


def assert_nothing_left(env: Env, driver: Driver) -> None:
    assert process_gone(driver.vmm_pid, driver.vmm_ticks), f"firecracker pid {driver.vmm_pid} still there"
    assert not env.socket.exists(), f"{env.socket} left behind"
    assert env.vm_dirs() == [], f"VM directories left behind: {env.vm_dirs()}"


def test_start_status_refuse_second_then_ctrl_c(env: Env, drivers: list[Driver]) -> None:
    driver = launch(env, drivers, "--vcpus", "2")
    driver.wait_running()
    assert [d.name for d in env.vm_dirs()] == [driver.vm_id]

    status = env.run("status", "--socket", str(env.socket))
    assert status.returncode == 0, status.stderr + status.stdout
    out = status.stdout
    assert re.search(r"^state:\s+Running \(firecracker: Running\)$", out, re.M), out
    assert re.search(r"^vcpus:\s+2$", out, re.M) and re.search(r"^memory:\s+64 MiB$", out, re.M), out
    assert re.search(r"^uptime:\s+\d+m\d\ds$", out, re.M), out
    assert f"firecracker {firecracker_version(env.firecracker)}" in out
    facts = json.loads(env.run("status", "--socket", str(env.socket), "--json").stdout)
    assert (facts["state"], facts["vmm_state"], facts["vcpus"], facts["vmm_pid"]) == (
        "Running", "Running", 2, driver.vmm_pid,
    )  # fmt: skip

    second = subprocess.run(env.start_args(), capture_output=True, text=True, timeout=60, check=False)
    assert second.returncode == 2
    assert second.stderr.strip() == (
        f"clawpot-driver: socket {env.socket} is in use by firecracker (pid {driver.vmm_pid})"
    )
    assert [d.name for d in env.vm_dirs()] == [driver.vm_id]  # the refused start created nothing

    driver.proc.send_signal(signal.SIGINT)
    assert driver.wait_exit() == 0, driver.stderr
    assert "SIGINT: stopping the VM" in driver.stderr
    assert_nothing_left(env, driver)


def test_the_real_kernel_with_its_console_on_stdout(
    env: Env, drivers: list[Driver], installed_assets: InstalledAssets
) -> None:
    # The stock kernel: on kvm_pvm hosts it dies ~10 s in and the driver exits 1 with the reason by
    # itself; elsewhere it keeps running and Ctrl+C ends it. Either way nothing may be left.
    console = env.tmp / "console.out"
    driver = launch(
        env, drivers, "--kernel", str(installed_assets.kernel), "--rootfs", str(installed_assets.rootfs),
        "--memory", "256", "--console", stdout=console,
    )  # fmt: skip
    driver.wait_running()
    assert wait_until(lambda: "Linux version" in console.read_text(errors="replace"), 120, 0.1), driver.stderr
    if driver.proc.poll() is None:
        driver.proc.send_signal(signal.SIGINT)
    code = driver.wait_exit()
    if code == 1:
        assert re.search(
            rf"VM {driver.vm_id} failed: firecracker (exited with code|killed by)", driver.stderr
        )
    else:
        assert code == 0, driver.stderr
    assert_nothing_left(env, driver)


def test_stop_command(env: Env, drivers: list[Driver]) -> None:
    driver = launch(env, drivers)
    driver.wait_running()
    stop = env.run("stop", "--socket", str(env.socket))
    assert stop.returncode == 0, stop.stderr
    assert f"VM {driver.vm_id} stopped" in stop.stderr
    assert driver.wait_exit() == 0, driver.stderr
    assert_nothing_left(env, driver)
    again = env.run("stop", "--socket", str(env.socket))
    assert (again.returncode, again.stderr.strip()) == (1, f"clawpot-driver: no VM at {env.socket}")
    status = env.run("status", "--socket", str(env.socket))
    assert (status.returncode, status.stderr.strip()) == (1, f"clawpot-driver: no VM at {env.socket}")


def test_stale_socket_is_recovered(env: Env, drivers: list[Driver]) -> None:
    # What a crashed VMM leaves: a socket file nobody listens on.
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(env.socket))
    stale.close()
    status = env.run("status", "--socket", str(env.socket))
    assert (status.returncode, status.stderr.strip()) == (
        1, f"clawpot-driver: stale socket {env.socket}: no VMM is listening on it",
    )  # fmt: skip
    driver = launch(env, drivers)
    driver.wait_running()
    assert (
        f"clawpot-driver: removed stale socket {env.socket} (no process was listening on it)" in driver.lines
    )
    driver.proc.send_signal(signal.SIGTERM)
    assert driver.wait_exit() == 0, driver.stderr
    assert_nothing_left(env, driver)


def test_a_killed_driver_takes_firecracker_with_it_and_the_next_start_recovers(
    env: Env, drivers: list[Driver]
) -> None:
    first = launch(env, drivers)
    first.wait_running()
    first.proc.kill()  # no chance to clean up
    first.wait_exit()
    assert wait_until(lambda: process_gone(first.vmm_pid, first.vmm_ticks), 10), (
        "firecracker outlived its driver"
    )
    assert env.socket.exists() and [d.name for d in env.vm_dirs()] == [first.vm_id]

    second = launch(env, drivers)
    second.wait_running()
    assert (
        f"clawpot-driver: removed stale socket {env.socket} (no process was listening on it)" in second.lines
    )
    assert any(f"removed the directory of dead VM {first.vm_id}" in line for line in second.lines)
    assert [d.name for d in env.vm_dirs()] == [second.vm_id]
    second.proc.send_signal(signal.SIGINT)
    assert second.wait_exit() == 0, second.stderr
    assert_nothing_left(env, second)


def test_stop_a_firecracker_no_driver_owns(env: Env) -> None:
    # Started by hand, API only: `stop` asks for Ctrl+Alt+Del (refused before boot), then SIGTERMs it.
    (env.tmp / "fc.log").touch()
    firecracker = subprocess.Popen(
        [str(env.firecracker), "--api-sock", str(env.socket), "--log-path", str(env.tmp / "fc.log")],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert wait_until(env.socket.exists, 10)
        ticks = procfs.start_ticks(firecracker.pid)
        status = env.run("status", "--socket", str(env.socket))
        assert status.returncode == 0 and "Not started (firecracker: Not started)" in status.stdout, status
        stop = env.run("stop", "--socket", str(env.socket), "--grace", "0.2")
        assert stop.returncode == 0, stop.stderr
        assert stop.stderr.strip() == (
            f"clawpot-driver: stopped firecracker (pid {firecracker.pid}) and removed {env.socket}"
        )
        assert firecracker.wait(10) == -signal.SIGTERM
        assert process_gone(firecracker.pid, ticks) and not env.socket.exists()
    finally:
        if firecracker.poll() is None:
            firecracker.kill()
            firecracker.wait()


def test_a_vm_firecracker_rejects_exits_1_and_leaves_nothing(env: Env, drivers: list[Driver]) -> None:
    low = write_halting_kernel(env.tmp / "low.elf", load_address=0x1000)
    result = subprocess.run(
        [*env.start_args(), "--kernel", str(low)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 1, result.stderr
    # Firecracker exits refusing its configuration file; its logged reason ends the line, verbatim.
    assert "failed to start: start VMM: firecracker rejected the configuration: " in result.stderr
    assert "Kernel Loader: Invalid entry address\n" in result.stderr
    assert not env.socket.exists() and env.vm_dirs() == []


BAD_INPUTS = [
    (["--vcpus", "0"], "vcpus must be between 1 and 32, got 0"),
    (["--vcpus", "33"], "vcpus must be between 1 and 32, got 33"),
    (["--memory", "16"], "memory must be at least 64 MiB, got 16 MiB"),
    (["--memory", "100000000"], "memory of 100000000 MiB exceeds the host's available memory"),
    (["--kernel", "{tmp}/missing"], "kernel {tmp}/missing does not exist"),
    (["--kernel", "{tmp}/blank.img"], "kernel {tmp}/blank.img is not an ELF image"),
    (["--rootfs", "{tmp}/missing.ext4"], "rootfs {tmp}/missing.ext4 does not exist"),
    (["--rootfs", "/proc/self/mem"], "rootfs /proc/self/mem cannot be read"),
    (["--socket", "{tmp}/nodir/fc.sock"], "socket directory {tmp}/nodir does not exist"),
    (["--socket", "{tmp}/" + "s" * 110], "unix sockets allow at most 107"),
    (["--socket", "{tmp}/blank.img"], "{tmp}/blank.img exists and is not a socket; refusing to replace it"),
    (["--vmm", "xen"], "Invalid value for '--vmm'"),
    (["--vcpus", "two"], "'two' is not a valid integer"),
]


@pytest.mark.parametrize(("extra", "message"), BAD_INPUTS, ids=[" ".join(e) for e, _ in BAD_INPUTS])
def test_bad_input_is_one_clear_line_and_leaves_nothing(env: Env, extra: list[str], message: str) -> None:
    extra = [arg.format(tmp=env.tmp) for arg in extra]
    message = message.format(tmp=env.tmp)
    before = sorted(p.name for p in env.tmp.iterdir())
    result = subprocess.run(
        [*env.start_args(), *extra], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    if not message.startswith(("Invalid value", "'two'")):  # click's own usage errors carry a usage line
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert sorted(p.name for p in env.tmp.iterdir()) == before, "a rejected start must create nothing"


def test_two_problems_are_two_lines(env: Env) -> None:
    result = subprocess.run(
        [*env.start_args(), "--vcpus", "0", "--kernel", str(env.tmp / "missing")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "clawpot-driver: vcpus must be between 1 and 32, got 0",
        f"clawpot-driver: kernel {env.tmp / 'missing'} does not exist",
    ]
