"""FirecrackerProcess failure paths that need no real Firecracker: the binary cannot run, or never
opens its API socket.

For the deadline case a stand-in is unavoidable: the real binary always opens its socket within
milliseconds, so ``sleep`` plays "a VMM that hangs before its API is up". Everything else about the
process is tested with the real binary in tests/integration/test_firecracker_*.py.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from clawpot.vm import procfs
from clawpot.vmm.base import VmmStartError
from clawpot.vmm.firecracker.client import FirecrackerClient
from clawpot.vmm.firecracker.errors import FirecrackerApiUnavailable
from clawpot.vmm.firecracker.process import FirecrackerProcess, LaunchFiles


def files(tmp_path: Path) -> LaunchFiles:
    return LaunchFiles(
        tmp_path / "api.sock", tmp_path / "fc.log", tmp_path / "serial.log", tmp_path / "fc.stderr"
    )


async def test_missing_binary_is_a_start_error(tmp_path: Path) -> None:
    process = FirecrackerProcess(tmp_path / "no-firecracker", "vm", files(tmp_path))
    with pytest.raises(VmmStartError, match=r"cannot run .*no-firecracker: No such file or directory"):
        await process.spawn()
    assert process.pid is None


async def test_existing_socket_is_refused_before_spawning(tmp_path: Path) -> None:
    launch = files(tmp_path)
    launch.api_socket.write_text("")
    process = FirecrackerProcess(Path("/bin/true"), "vm", launch)
    with pytest.raises(VmmStartError, match="already exists"):
        await process.spawn()
    assert process.pid is None


async def test_api_deadline_then_terminate_reaps(tmp_path: Path) -> None:
    sleep = shutil.which("sleep")
    assert sleep is not None
    # `sleep --api-sock ...` rejects the flags and exits; wrap it so it ignores them and hangs instead.
    hang = tmp_path / "hang"
    hang.write_text(f"#!/bin/sh\nexec {sleep} 60\n")
    hang.chmod(0o755)
    process = FirecrackerProcess(hang, "vm", files(tmp_path))
    await process.spawn()
    pid = process.pid
    assert pid is not None
    with pytest.raises(VmmStartError, match=r"API socket .* not ready after"):
        await process.wait_api_ready(time.monotonic() + 0.2)
    info = await process.terminate(term_seconds=1.0)
    assert info.reason == "firecracker killed by SIGTERM"
    assert not procfs.is_alive(pid) and procfs.start_ticks(pid) is None  # reaped: not even a zombie


async def test_client_on_a_missing_or_stale_socket(tmp_path: Path) -> None:
    async with FirecrackerClient(tmp_path / "missing.sock", timeout=2) as client:
        with pytest.raises(
            FirecrackerApiUnavailable, match=r"no answer from firecracker on .*missing\.sock \(GET /\)"
        ):
            await client.instance_info()
