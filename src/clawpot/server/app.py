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

Both count and log every call (``rpcmetrics``). With ``--metrics-listen`` a third listener serves
Prometheus' ``/metrics`` (``clawpot.metrics``): the same loopback-or-TLS rule, checked up front.
On shutdown the streams clients hold open (WatchVms, StreamLogs --follow) are ended first, so they
do not hold the grace period.
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
from clawpot.e2b import listener as e2b_listener
from clawpot.e2b.app import create_app as create_e2b_app
from clawpot.e2b.context import E2bContext
from clawpot.metrics import instruments
from clawpot.metrics.collector import NodeCollector
from clawpot.metrics.http import MetricsServer, check_address
from clawpot.node.node import Node, NodeConfig
from clawpot.server import apitoken, listeners
from clawpot.server.auth import TokenAuthInterceptor
from clawpot.server.listeners import TlsFiles
from clawpot.server.rpcmetrics import RpcMetricsInterceptor
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
    e2b_listen: str | None = None  # the E2B SDK front door (clawpot.e2b), off unless given
    vm_timeout: int | None = None  # lifetime of VMs created without one; None: unlimited
    # HOST:PORT for Prometheus' /metrics (None: not served).
    metrics_listen: str | None = None
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


def _known_methods() -> frozenset[str]:
    """Every method the servers serve (``/package.Service/Method``): the RPC metrics' label values."""
    from grpc_health.v1 import health_pb2 as h
    from grpc_reflection.v1alpha import reflection_pb2 as r

    services = [vm_pb2.DESCRIPTOR.services_by_name["VmService"], *h.DESCRIPTOR.services_by_name.values()]
    services += list(r.DESCRIPTOR.services_by_name.values())
    return frozenset(f"/{svc.full_name}/{m.name}" for svc in services for m in svc.methods)


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
    e2b_plan = e2b_listener.plan(config.e2b_listen, config.tls) if config.e2b_listen else None
    metrics_address = (
        check_address(config.metrics_listen, config.tls) if config.metrics_listen is not None else None
    )
    token = apitoken.ensure_token(config.node.data_dir)
    node = await Node.open(config.node)
    rpc_metrics = RpcMetricsInterceptor(_known_methods())
    service = Service(
        node,
        memory_overcommit=config.memory_overcommit,
        default_timeout=config.vm_timeout,
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
    e2b_stop = asyncio.Event()
    e2b_task: asyncio.Task[None] | None = None
    collector: NodeCollector | None = None
    metrics: MetricsServer | None = None
    try:
        if metrics_address is not None:
            collector = NodeCollector.of(node, loop)
            instruments.REGISTRY.register(collector)
            metrics = MetricsServer(metrics_address, instruments.REGISTRY)
            log.info("serving /metrics on %s", config.metrics_listen)
        if e2b_plan is not None:
            e2b_socket = e2b_listener.bind(e2b_plan)  # OSError (port taken, ...): one line, nothing left
            e2b_app = create_e2b_app(E2bContext(service=service, token=token))
            e2b_task = asyncio.create_task(e2b_listener.serve(e2b_app, e2b_socket, e2b_plan.tls, e2b_stop))
            e2b_task.add_done_callback(lambda _task: stop.set())  # a listener that dies stops the server
        if plan.unix:
            local = _grpc_server(servicer, health_servicer, (rpc_metrics,))
            for path in plan.unix:
                path.parent.mkdir(parents=True, exist_ok=True)
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()  # a stale socket from a previous run; we hold the data-dir lock
                _bind(local, f"unix:{path}", None)
            servers.append(local)
        if plan.tcp:
            # Metrics first: a call the token check refuses is counted too (UNAUTHENTICATED).
            network = _grpc_server(servicer, health_servicer, (rpc_metrics, TokenAuthInterceptor(token)))
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
        e2b_stop.set()
        node.end_streams()
        await asyncio.gather(*(server.stop(config.shutdown_grace) for server in servers))
        await service.close()
        if e2b_task is not None:
            try:
                await e2b_task
            except Exception:
                log.exception("the E2B listener failed")
        if metrics is not None:
            await asyncio.to_thread(metrics.close)
        if collector is not None:
            instruments.REGISTRY.unregister(collector)
        await node.close(stop_vms=config.stop_vms_on_exit)
        for path in plan.unix:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
