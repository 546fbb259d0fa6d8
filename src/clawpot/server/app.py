"""`clawpot-server`: process entry, listeners, health/reflection, graceful shutdown.

The gRPC server itself is wiring only: the servicer translates protobuf to ``Service`` calls; the
service validates and admits, the node (``clawpot.node``) does the work. On SIGTERM/SIGINT the
server stops accepting calls, gives in-flight calls a grace period, then either leaves VMs running for
the next start to adopt (default) or stops them (``--stop-vms-on-exit``).

Two gRPC servers share one servicer: the *local* one serves the unix sockets (the filesystem guards
them: 0600, or 0660 for ``--socket-group``) and the *network* one serves TCP, where every call but
health checking needs the API token (``auth``) and non-loopback addresses need TLS (``listeners``).
Two servers rather than one that tells listeners apart by ``context.peer()``: a call can only reach
the token-free path through a socket the filesystem let it open, whatever the peer string says.
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
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]  # re-exported, not in stubs
from grpc_reflection.v1alpha import reflection

from clawpot import limits
from clawpot.node.node import Node, NodeConfig
from clawpot.server import apitoken, listeners
from clawpot.server.auth import TokenAuthInterceptor
from clawpot.server.listeners import TlsFiles
from clawpot.server.servicer import VmServicer
from clawpot.service.poolspec import PoolShape
from clawpot.service.service import Service
from clawpot.v1 import vm_pb2, vm_pb2_grpc

log = logging.getLogger(__name__)

DEFAULT_LISTEN = "127.0.0.1:50051"
SERVICE_NAME = vm_pb2.DESCRIPTOR.services_by_name["VmService"].full_name


@dataclass(frozen=True)
class ServerConfig:
    listen: Sequence[str]
    node: NodeConfig
    memory_overcommit: float = limits.DEFAULT_MEMORY_OVERCOMMIT
    shutdown_grace: float = 10.0
    stop_vms_on_exit: bool = False
    tls: TlsFiles | None = None
    socket_group: str | None = None
    # The warm pool (``--pool``): shapes kept ready, paused (default) or running.
    pool: tuple[PoolShape, ...] = ()
    pool_paused: bool = True


@contextlib.contextmanager
def _private_umask() -> Iterator[None]:
    # gRPC creates unix sockets with the process umask; make them owner-only (0600) from birth.
    old = os.umask(0o177)
    try:
        yield
    finally:
        os.umask(old)


def _grpc_server(
    servicer: VmServicer, health_servicer: object, interceptors: Sequence[Any]
) -> grpc.aio.Server:
    server = grpc.aio.server(interceptors=interceptors)
    vm_pb2_grpc.add_VmServiceServicer_to_server(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    return server


def _bind(server: grpc.aio.Server, address: str, tls: grpc.ServerCredentials | None) -> None:
    port = server.add_secure_port(address, tls) if tls is not None else server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen on {address}")


def _open_unix_socket(path: Path, gid: int | None) -> None:
    if gid is None:
        path.chmod(0o600)
        return
    # Group first, then the group bits: the socket is never open to a group that is not the chosen one.
    os.chown(path, -1, gid)
    path.chmod(0o660)


async def serve(config: ServerConfig, ready: asyncio.Event | None = None) -> None:
    # Every flag is checked before anything has side effects (ListenError: one line).
    plan = listeners.plan(config.listen, tls=config.tls, socket_group=config.socket_group)
    token = apitoken.ensure_token(config.node.data_dir)
    node = await Node.open(config.node)
    service = Service(
        node,
        memory_overcommit=config.memory_overcommit,
        pool=list(config.pool),
        pool_paused=config.pool_paused,
    )
    servicer = VmServicer(service)
    health_servicer = health_aio.HealthServicer()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    servers: list[grpc.aio.Server] = []
    try:
        if plan.unix:
            local = _grpc_server(servicer, health_servicer, ())
            for path in plan.unix:
                path.parent.mkdir(parents=True, exist_ok=True)
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()  # a stale socket from a previous run; we hold the data-dir lock
                _bind(local, f"unix:{path}", None)
            servers.append(local)
        if plan.tcp:
            network = _grpc_server(servicer, health_servicer, (TokenAuthInterceptor(token),))
            for address in plan.tcp:
                _bind(network, address, plan.tls)
            servers.append(network)
        with _private_umask():
            for server in servers:
                await server.start()
        for path in plan.unix:
            _open_unix_socket(path, plan.socket_gid)
        for name in ("", SERVICE_NAME):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("listening on %s", ", ".join(config.listen))
        service.start()
        if ready is not None:
            ready.set()
        await stop.wait()
        log.info("shutting down (grace %.0fs)", config.shutdown_grace)
        await health_servicer.enter_graceful_shutdown()
    finally:
        await asyncio.gather(*(server.stop(config.shutdown_grace) for server in servers))
        await service.close()
        await node.close(stop_vms=config.stop_vms_on_exit)
        for path in plan.unix:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
