"""`clawpot-server`: process entry, listeners, health/reflection, graceful shutdown.

The gRPC server itself is wiring only: the servicer translates protobuf to ``VmManager`` calls and
the manager does the work. On SIGTERM/SIGINT the server stops accepting calls, gives in-flight calls
a grace period, then either leaves VMs running for the next start to adopt (default) or stops them
(``--stop-vms-on-exit``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]  # re-exported, not in stubs
from grpc_reflection.v1alpha import reflection

from clawpot.server.manager import ManagerConfig, VmManager
from clawpot.server.servicer import VmServicer
from clawpot.v1 import vm_pb2, vm_pb2_grpc

log = logging.getLogger(__name__)

DEFAULT_LISTEN = "127.0.0.1:50051"
SERVICE_NAME = vm_pb2.DESCRIPTOR.services_by_name["VmService"].full_name


@dataclass(frozen=True)
class ServerConfig:
    listen: Sequence[str]
    manager: ManagerConfig
    shutdown_grace: float = 10.0
    stop_vms_on_exit: bool = False


def unix_socket_path(address: str) -> Path | None:
    """The filesystem path of a ``unix:`` listen address, else None."""
    if address.startswith("unix://"):
        return Path(address.removeprefix("unix://"))
    if address.startswith("unix:"):
        return Path(address.removeprefix("unix:"))
    return None


@contextlib.contextmanager
def _private_umask() -> Iterator[None]:
    # gRPC creates unix sockets with the process umask; make them owner-only (0600) from birth.
    old = os.umask(0o177)
    try:
        yield
    finally:
        os.umask(old)


async def serve(config: ServerConfig, ready: asyncio.Event | None = None) -> None:
    manager = await VmManager.open(config.manager)
    server = grpc.aio.server()
    vm_pb2_grpc.add_VmServiceServicer_to_server(VmServicer(manager), server)
    health_servicer = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)

    for address in config.listen:
        path = unix_socket_path(address)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # a stale socket from a previous run; we hold the data-dir lock
        if server.add_insecure_port(address) == 0:
            raise OSError(f"cannot listen on {address}")

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    try:
        with _private_umask():
            await server.start()
        for address in config.listen:
            path = unix_socket_path(address)
            if path is not None:
                path.chmod(0o600)
        for name in ("", SERVICE_NAME):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("listening on %s", ", ".join(config.listen))
        if ready is not None:
            ready.set()
        await stop.wait()
        log.info("shutting down (grace %.0fs)", config.shutdown_grace)
        await health_servicer.enter_graceful_shutdown()
    finally:
        await server.stop(config.shutdown_grace)
        await manager.close(stop_vms=config.stop_vms_on_exit)
        for address in config.listen:
            path = unix_socket_path(address)
            if path is not None:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
