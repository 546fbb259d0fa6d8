"""Async client of the Firecracker API over its unix socket (httpx's unix-socket transport).

Every transport failure becomes ``FirecrackerApiUnavailable`` and every non-2xx answer becomes
``FirecrackerApiError`` carrying Firecracker's ``fault_message`` verbatim: errors are translated here,
once, and nothing above this module sees httpx.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from clawpot.vmm.firecracker import models
from clawpot.vmm.firecracker.errors import FirecrackerApiError, FirecrackerApiUnavailable

_R = TypeVar("_R", bound=BaseModel)

# InstanceStart loads the kernel and maps guest memory; on a busy 2-core host it can take seconds.
DEFAULT_TIMEOUT = 30.0


class FirecrackerClient:
    def __init__(self, socket_path: Path, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.socket_path = socket_path
        self._http = httpx.AsyncClient(
            # No TLS over a unix socket; verify=False also skips loading the CA bundle, which costs
            # 40-100 ms per client and was the largest part of a VM start.
            transport=httpx.AsyncHTTPTransport(uds=str(socket_path), verify=False),
            trust_env=False,  # proxy variables must not apply to a unix socket
            # The host part is ignored over a unix socket; Firecracker only looks at the path.
            base_url="http://localhost",
            timeout=timeout,
        )

    async def __aenter__(self) -> FirecrackerClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- reads ---------------------------------------------------------------------------------------

    async def instance_info(self) -> models.InstanceInfo:
        return await self._get("/", models.InstanceInfo)

    async def version(self) -> models.FirecrackerVersion:
        return await self._get("/version", models.FirecrackerVersion)

    async def machine_config(self) -> models.MachineConfigurationInfo:
        return await self._get("/machine-config", models.MachineConfigurationInfo)

    async def vm_config(self) -> models.VmConfigInfo:
        return await self._get("/vm/config", models.VmConfigInfo)

    # -- configuration (before InstanceStart) --------------------------------------------------------

    async def put_machine_config(self, config: models.MachineConfiguration) -> None:
        await self._put("/machine-config", config)

    async def put_boot_source(self, boot: models.BootSource) -> None:
        await self._put("/boot-source", boot)

    async def put_drive(self, drive: models.Drive) -> None:
        await self._put(f"/drives/{drive.drive_id}", drive)

    async def put_network_interface(self, iface: models.NetworkInterface) -> None:
        await self._put(f"/network-interfaces/{iface.iface_id}", iface)

    async def put_vsock(self, vsock: models.Vsock) -> None:
        await self._put("/vsock", vsock)

    async def put_logger(self, logger: models.Logger) -> None:
        await self._put("/logger", logger)

    async def put_metrics(self, metrics: models.Metrics) -> None:
        await self._put("/metrics", metrics)

    # -- actions -------------------------------------------------------------------------------------

    async def action(self, action_type: models.ActionType) -> None:
        await self._put("/actions", models.InstanceAction(action_type=action_type))

    async def instance_start(self) -> None:
        await self.action(models.ActionType.INSTANCE_START)

    async def send_ctrl_alt_del(self) -> None:
        await self.action(models.ActionType.SEND_CTRL_ALT_DEL)

    async def flush_metrics(self) -> None:
        await self.action(models.ActionType.FLUSH_METRICS)

    # -- pause, snapshots (after InstanceStart; load only on a fresh process) ------------------------

    async def set_vm_state(self, state: models.VmStateChange) -> None:
        await self._request("PATCH", "/vm", models.Vm(state=state))

    async def create_snapshot(self, body: models.SnapshotCreate) -> None:
        await self._put("/snapshot/create", body)

    async def load_snapshot(self, body: models.SnapshotLoad) -> None:
        await self._put("/snapshot/load", body)

    # -- plumbing ------------------------------------------------------------------------------------

    async def _get(self, path: str, model: type[_R]) -> _R:
        response = await self._request("GET", path, None)
        try:
            return model.model_validate_json(response.content)
        except ValidationError as exc:
            raise FirecrackerApiUnavailable(
                f"unexpected answer from firecracker on GET {path}: {response.text!r} ({exc.error_count()} "
                "field errors)"
            ) from exc

    async def _put(self, path: str, body: models._Request) -> None:
        await self._request("PUT", path, body)

    async def _request(self, method: str, path: str, body: models._Request | None) -> httpx.Response:
        try:
            response = await self._http.request(method, path, json=body.body() if body is not None else None)
        except httpx.TransportError as exc:
            detail = str(exc) or type(exc).__name__
            raise FirecrackerApiUnavailable(
                f"no answer from firecracker on {self.socket_path} ({method} {path}): {detail}"
            ) from exc
        if response.is_success:
            return response
        raise FirecrackerApiError(method, path, response.status_code, _fault_message(response))


def _fault_message(response: httpx.Response) -> str:
    try:
        return models.ApiError.model_validate_json(response.content).fault_message
    except ValidationError:
        return response.text.strip() or f"HTTP {response.status_code} without a body"
