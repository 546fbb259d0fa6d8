"""The Firecracker API client against the real binary (no guest is booted: API calls only)."""

from __future__ import annotations

import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from firecracker_helpers import process_gone

from clawpot.vm import procfs
from clawpot.vmm.base import VmmStartError
from clawpot.vmm.firecracker import models
from clawpot.vmm.firecracker.backend import firecracker_version
from clawpot.vmm.firecracker.client import FirecrackerClient
from clawpot.vmm.firecracker.errors import FirecrackerApiError, FirecrackerApiUnavailable
from clawpot.vmm.firecracker.process import FirecrackerProcess, LaunchFiles


@dataclass
class Api:
    process: FirecrackerProcess
    client: FirecrackerClient
    tmp: Path


def launch_files(tmp: Path) -> LaunchFiles:
    return LaunchFiles(tmp / "api.sock", tmp / "fc.log", tmp / "serial.log", tmp / "fc.stderr")


@pytest.fixture
async def api(firecracker_bin: Path, tmp_path: Path) -> AsyncIterator[Api]:
    process = FirecrackerProcess(firecracker_bin, "raw-api-test", launch_files(tmp_path))
    await process.spawn()
    try:
        await process.wait_api_ready(time.monotonic() + 30)
        async with FirecrackerClient(process.files.api_socket) as client:
            yield Api(process, client, tmp_path)
    finally:
        await process.terminate(term_seconds=0)


async def raw_fault(socket: Path, path: str, body: dict[str, object]) -> str:
    """The fault_message as Firecracker sent it, read without our client."""
    async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=str(socket))) as http:
        response = await http.put(f"http://localhost{path}", json=body)
    assert response.status_code == 400
    fault = response.json()["fault_message"]
    assert isinstance(fault, str)
    return fault


async def test_version_and_instance_info(api: Api, firecracker_bin: Path) -> None:
    version = await api.client.version()
    assert version.firecracker_version == firecracker_version(firecracker_bin)
    info = await api.client.instance_info()
    assert info.state is models.InstanceState.NOT_STARTED
    assert (info.id, info.app_name, info.vmm_version) == (
        "raw-api-test",
        "Firecracker",
        version.firecracker_version,
    )


async def test_machine_config_round_trip(api: Api) -> None:
    await api.client.put_machine_config(models.MachineConfiguration(vcpu_count=2, mem_size_mib=192))
    machine = await api.client.machine_config()
    assert (machine.vcpu_count, machine.mem_size_mib) == (2, 192)


@pytest.mark.parametrize(
    ("call", "path", "body", "expected"),
    [
        (
            lambda c, t: c.put_boot_source(models.BootSource(kernel_image_path=t / "missing")),
            "/boot-source",
            lambda t: {"kernel_image_path": str(t / "missing")},
            "No such file or directory",
        ),
        (
            lambda c, t: c.put_machine_config(
                models.MachineConfiguration(vcpu_count=3, mem_size_mib=128, smt=True)
            ),
            "/machine-config",
            lambda t: {"vcpu_count": 3, "mem_size_mib": 128, "smt": True},
            "vCPUs",
        ),
        (
            lambda c, t: c.put_logger(models.Logger(log_path=t / "no" / "log")),
            "/logger",
            lambda t: {"log_path": str(t / "no" / "log")},
            "Logger",
        ),
        (
            lambda c, t: c.put_metrics(models.Metrics(metrics_path=t / "no" / "metrics")),
            "/metrics",
            lambda t: {"metrics_path": str(t / "no" / "metrics")},
            "Metrics",
        ),
        (lambda c, t: c.instance_start(), "/actions", lambda t: {"action_type": "InstanceStart"}, "kernel"),
        (
            lambda c, t: c.flush_metrics(),
            "/actions",
            lambda t: {"action_type": "FlushMetrics"},
            "before starting",
        ),
        (
            lambda c, t: c.send_ctrl_alt_del(),
            "/actions",
            lambda t: {"action_type": "SendCtrlAltDel"},
            "before",
        ),
    ],
    ids=[
        "boot-source",
        "machine-config",
        "logger",
        "metrics",
        "InstanceStart",
        "FlushMetrics",
        "SendCtrlAltDel",
    ],
)
async def test_fault_message_reaches_the_caller_verbatim(
    api: Api, call: object, path: str, body: object, expected: str
) -> None:
    with pytest.raises(FirecrackerApiError) as info:
        await call(api.client, api.tmp)  # type: ignore[operator]
    error = info.value
    raw = await raw_fault(api.process.files.api_socket, path, body(api.tmp))  # type: ignore[operator]
    assert error.fault_message == raw
    assert expected in raw
    assert (error.method, error.path, error.status) == ("PUT", path, 400)
    assert str(error) == f"firecracker rejected PUT {path} (HTTP 400): {raw}"


async def test_accepted_configuration(api: Api) -> None:
    (api.tmp / "log").touch()
    (api.tmp / "metrics").touch()
    kernel = api.tmp / "vmlinux"
    kernel.write_bytes(b"\x7fELF")  # the kernel is only opened here; it is parsed at InstanceStart
    disk = api.tmp / "disk"
    disk.write_bytes(bytes(4096))
    await api.client.put_logger(models.Logger(log_path=api.tmp / "log", level=models.LogLevel.INFO))
    await api.client.put_metrics(models.Metrics(metrics_path=api.tmp / "metrics"))
    await api.client.put_boot_source(models.BootSource(kernel_image_path=kernel, boot_args="console=ttyS0"))
    await api.client.put_drive(
        models.Drive(drive_id="rootfs", path_on_host=disk, is_root_device=False, is_read_only=True)
    )
    await api.client.put_vsock(models.Vsock(guest_cid=3, uds_path=api.tmp / "v.sock"))
    assert (api.tmp / "v.sock").is_socket()
    assert 'Put request on "/metrics"' in (api.tmp / "log").read_text()


async def test_exit_before_the_api_is_up_is_explained(firecracker_bin: Path, tmp_path: Path) -> None:
    # Firecracker rejects the instance id and panics before it opens its socket.
    process = FirecrackerProcess(firecracker_bin, "bad id!", launch_files(tmp_path))
    await process.spawn()
    with pytest.raises(VmmStartError) as info:
        await process.wait_api_ready(time.monotonic() + 30)
    assert "firecracker exited before its API came up: firecracker killed by SIGABRT" in str(info.value)
    assert "Invalid instance ID" in str(info.value)


async def test_an_external_kill_is_reaped_and_explained(api: Api) -> None:
    pid = api.process.pid
    assert pid is not None
    ticks = procfs.start_ticks(pid)
    api.process.send_signal(signal.SIGKILL)
    info = await api.process.wait()
    assert (info.signal, info.reason) == (signal.SIGKILL, "firecracker killed by SIGKILL")
    assert process_gone(pid, ticks)
    with pytest.raises(FirecrackerApiUnavailable):
        await api.client.instance_info()
