"""The hybrid-vsock client against the real Firecracker binary, with no guest listening.

Firecracker is configured through its API socket (PUT /vsock) without starting a guest: its vsock unix
socket then exists and accepts ``CONNECT 10051``, but nothing ever answers, exactly as before a guest's
vsock driver is up. The client has to give up at its deadline with a clear "agent not reachable" error.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from clawpot.agent_client import AgentUnreachable, HybridVsockEndpoint, wait_ready

pytestmark = pytest.mark.firecracker

# Lets a developer point at a binary before `clawpot assets install` has run.
FIRECRACKER_ENV = "CLAWPOT_FIRECRACKER_BIN"


@pytest.fixture(scope="module")
def firecracker(request: pytest.FixtureRequest) -> Path:
    override = os.environ.get(FIRECRACKER_ENV)
    if override:
        return Path(override)
    path = request.getfixturevalue("firecracker_bin")
    assert isinstance(path, Path)
    return path


@pytest.fixture
def vmm(firecracker: Path, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """A Firecracker process with a vsock device (guest CID 3) and no guest started."""
    api = tmp_path / "api.sock"
    log = open(tmp_path / "firecracker.log", "wb")  # noqa: SIM115 - closed in the finalizer
    proc = subprocess.Popen([str(firecracker), "--api-sock", str(api)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while not api.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    f"firecracker did not create its API socket: {(tmp_path / 'firecracker.log').read_text()}"
                )
            time.sleep(0.02)
        uds = tmp_path / "v.sock"
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(api)), timeout=10) as http:
            reply = http.put("http://localhost/vsock", json={"guest_cid": 3, "uds_path": str(uds)})
        assert reply.status_code == 204, reply.text
        assert uds.exists(), "Firecracker did not create the vsock socket before InstanceStart"
        yield proc, uds
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        log.close()


async def test_no_guest_listener_means_agent_unreachable(vmm: tuple[subprocess.Popen[bytes], Path]) -> None:
    proc, uds = vmm
    started = time.monotonic()
    with pytest.raises(AgentUnreachable) as caught:
        async with asyncio.timeout(20):  # a hang fails here instead of stalling the suite
            await wait_ready(HybridVsockEndpoint(uds), 3.0, attempt_timeout=1.0)
    elapsed = time.monotonic() - started
    message = str(caught.value)
    assert message.startswith(f"agent not reachable at hybrid vsock {uds} port 10051 after 3 s: ")
    # Firecracker took the CONNECT and then stayed silent: our per-attempt deadline ended each try.
    assert re.search(r"no reply to CONNECT 10051 within [0-9.]+ s", message), message
    assert caught.value.attempts >= 2
    assert elapsed >= 3.0
    assert proc.poll() is None, "the client's attempts must not disturb the VMM"


async def test_dead_vmm_socket_left_on_disk(vmm: tuple[subprocess.Popen[bytes], Path]) -> None:
    proc, uds = vmm
    proc.send_signal(signal.SIGKILL)
    await asyncio.to_thread(proc.wait)
    assert uds.exists()  # Firecracker leaves it behind: ECONNREFUSED from now on
    with pytest.raises(AgentUnreachable) as caught:
        async with asyncio.timeout(10):
            await wait_ready(HybridVsockEndpoint(uds), 0.5, retry_interval=0.05)
    assert "Connection refused" in str(caught.value)
