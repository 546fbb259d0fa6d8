"""``FirecrackerVmm``: one VM under firecracker, configured over its API.

``start()`` is a list of named steps (spawn → API ready → metrics → machine → kernel → drives →
network → vsock → InstanceStart), logged as they run. Each step that leaves something behind pushes its
undo; when a later step fails the undos run in reverse, so a failed start leaves no process and no socket.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from clawpot.guest.endpoints import AgentEndpoint, HybridVsockEndpoint
from clawpot.vmm.base import ExitInfo, VmmProcess, VmmStartError
from clawpot.vmm.firecracker import models
from clawpot.vmm.firecracker.client import FirecrackerClient
from clawpot.vmm.firecracker.errors import FirecrackerApiError, FirecrackerError
from clawpot.vmm.firecracker.process import FirecrackerProcess, LaunchFiles
from clawpot.vmm.spec import BackendKind, VmSpec

log = logging.getLogger(__name__)

Undo = Callable[[], Awaitable[None]]

# The guest's vsock CID; the host side is a unix socket, so every VM can use the same one.
GUEST_CID = 3
# After SIGTERM, how long firecracker gets before SIGKILL.
TERM_SECONDS = 3.0
# How long a step's failure waits for a dying firecracker to be reaped, to report why it died.
_DEATH_GRACE = 0.5

API_SOCKET_NAME = "firecracker.sock"
VSOCK_SOCKET_NAME = "vsock.sock"
LOG_NAME = "firecracker.log"
STDERR_NAME = "firecracker.stderr"
METRICS_NAME = "firecracker.metrics"
SERIAL_NAME = "serial.log"


class FirecrackerVmm(VmmProcess):
    kind = BackendKind.FIRECRACKER

    def __init__(
        self,
        binary: Path,
        spec: VmSpec,
        vm_dir: Path,
        *,
        api_socket: Path | None = None,
        api_timeout: float = 10.0,
        die_with_parent: bool = True,
    ) -> None:
        self.spec = spec
        self.vm_dir = vm_dir
        self.api_timeout = api_timeout
        self.vsock_path = vm_dir / VSOCK_SOCKET_NAME
        self.metrics_path = vm_dir / METRICS_NAME
        self.files = LaunchFiles(
            api_socket=api_socket or vm_dir / API_SOCKET_NAME,
            log=vm_dir / LOG_NAME,
            serial=vm_dir / SERIAL_NAME,
            stderr=vm_dir / STDERR_NAME,
        )
        self.process = FirecrackerProcess(binary, vm_dir.name, self.files, die_with_parent=die_with_parent)
        self._client: FirecrackerClient | None = None

    # -- VmmProcess ----------------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self.process.pid

    @property
    def api_socket(self) -> Path:
        return self.files.api_socket

    @property
    def control_socket(self) -> Path:
        return self.files.api_socket

    @property
    def serial_log(self) -> Path:
        return self.files.serial

    @property
    def log_path(self) -> Path:
        return self.files.log

    @property
    def agent_endpoint(self) -> AgentEndpoint | None:
        return HybridVsockEndpoint(self.vsock_path) if self.spec.agent_channel else None

    @property
    def exit_info(self) -> ExitInfo | None:
        return self.process.exit_info

    @property
    def client(self) -> FirecrackerClient:
        if self._client is None:
            raise RuntimeError("firecracker is not started")
        return self._client

    async def start(self) -> None:
        async with contextlib.AsyncExitStack() as undo:
            for name, step in self._steps():
                log.info("firecracker %s: %s", self.vm_dir.name, name)
                try:
                    cleanup = await step()
                except FirecrackerApiError:
                    raise  # Firecracker rejected the configuration: its fault_message says why.
                except (FirecrackerError, OSError) as exc:
                    raise await self._start_failure(name, exc) from exc
                if cleanup is not None:
                    undo.push_async_callback(cleanup)
            undo.pop_all()

    async def request_shutdown(self) -> None:
        if self._client is not None and self.process.running:
            await self._client.send_ctrl_alt_del()

    async def stop(self, grace: float = 5.0) -> ExitInfo:
        if self.process.running and grace > 0:
            try:
                await self.request_shutdown()
            except FirecrackerError as exc:
                log.debug("SendCtrlAltDel failed (%s); going on with SIGTERM", exc)
            await self.process.wait_at_most(grace)
        return await self._terminate()

    async def kill(self) -> ExitInfo:
        return await self._terminate(term_seconds=0)

    async def wait(self) -> ExitInfo:
        return await self.process.wait()

    # -- the boot steps ------------------------------------------------------------------------------

    def _steps(self) -> list[tuple[str, Callable[[], Awaitable[Undo | None]]]]:
        steps: list[tuple[str, Callable[[], Awaitable[Undo | None]]]] = [
            ("spawn firecracker", self._spawn),
            ("wait for the API socket", self._wait_api),
            ("metrics", self._metrics),
            ("machine config", self._machine),
            ("boot source", self._boot_source),
            ("drives", self._drives),
        ]
        if self.spec.network_interfaces:
            steps.append(("network interfaces", self._network))
        if self.spec.agent_channel:
            steps.append(("vsock", self._vsock))
        steps.append(("InstanceStart", self._instance_start))
        return steps

    async def _spawn(self) -> Undo:
        await self.process.spawn()
        return self._undo_spawn

    async def _undo_spawn(self) -> None:
        await self._terminate(term_seconds=0)

    async def _wait_api(self) -> None:
        await self.process.wait_api_ready(time.monotonic() + self.api_timeout)
        self._client = FirecrackerClient(self.files.api_socket)

    async def _metrics(self) -> None:
        self.metrics_path.touch()
        await self.client.put_metrics(models.Metrics(metrics_path=self.metrics_path))

    async def _machine(self) -> None:
        await self.client.put_machine_config(
            models.MachineConfiguration(vcpu_count=self.spec.vcpus, mem_size_mib=self.spec.memory_mib)
        )

    async def _boot_source(self) -> None:
        await self.client.put_boot_source(
            models.BootSource(kernel_image_path=self.spec.kernel, boot_args=self.spec.boot_args)
        )

    async def _drives(self) -> None:
        for drive in self.spec.drives:
            # No drive is flagged is_root_device: the spec's boot args already say root=/dev/vda, and
            # Firecracker would append a second "root=/dev/vda ro". Unflagged drives attach in order,
            # so drives[0] is still vda.
            await self.client.put_drive(
                models.Drive(
                    drive_id=drive.drive_id,
                    path_on_host=drive.path,
                    is_root_device=False,
                    is_read_only=drive.read_only,
                )
            )

    async def _network(self) -> None:
        for iface in self.spec.network_interfaces:
            await self.client.put_network_interface(
                models.NetworkInterface(
                    iface_id=iface.iface_id, host_dev_name=iface.tap_name, guest_mac=iface.mac
                )
            )

    async def _vsock(self) -> None:
        await self.client.put_vsock(models.Vsock(guest_cid=GUEST_CID, uds_path=self.vsock_path))

    async def _instance_start(self) -> None:
        await self.client.instance_start()

    # -- teardown ------------------------------------------------------------------------------------

    async def _start_failure(self, step: str, exc: BaseException) -> VmmStartError:
        """Explain a failed step, preferring the process's own exit reason when it died."""
        info = self.process.exit_info
        if info is None and self.process.pid is not None:
            info = await self.process.wait_at_most(_DEATH_GRACE)
        if info is not None:
            return VmmStartError(f"{step}: {info.reason}")
        return VmmStartError(f"{step}: {exc}")

    async def _terminate(self, term_seconds: float = TERM_SECONDS) -> ExitInfo:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        if self.process.pid is None:
            info = ExitInfo(None, None, "firecracker was never started")
        else:
            info = await self.process.terminate(term_seconds)
        self._remove_sockets()
        return info

    def _remove_sockets(self) -> None:
        # Firecracker leaves its sockets behind when it dies; guest-initiated vsock connections
        # would have created "<vsock>_<port>" listeners next to the vsock socket.
        for path in (self.files.api_socket, self.vsock_path, *self.vm_dir.glob(f"{VSOCK_SOCKET_NAME}_*")):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
