"""``--e2b-listen``: the HTTP listener of the E2B front door, served by hypercorn in the server's loop.

HTTP/1.1 and HTTP/2 (over TLS by ALPN; in clear text by prior knowledge or ``Upgrade: h2c``), as
hypercorn serves them. The address follows the gRPC listener's rule (``server.listeners``): a loopback
``HOST:PORT`` may be clear text, any other needs ``--tls-cert``/``--tls-key``; ``unix:/path`` is a
socket of mode 0600 (for a local reverse proxy). Unlike the gRPC unix socket, calls on it still need
the API key: the E2B SDK always sends one.

The socket is bound here, before hypercorn starts, so a taken port or a bad path is a one-line start-up
error, and port 0 works (``bound_address`` says which port the kernel chose).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config
from hypercorn.typing import ASGIFramework
from starlette.types import ASGIApp

from clawpot import limits
from clawpot.server.listeners import ListenError, TlsFiles, is_loopback, tcp_host, unix_socket_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class E2bListenPlan:
    address: str
    unix: Path | None
    tls: TlsFiles | None  # only for TCP; None for clear text


def plan(address: str, tls: TlsFiles | None) -> E2bListenPlan:
    """Check ``--e2b-listen`` before anything starts (``ListenError``: one line)."""
    path = unix_socket_path(address)
    if path is not None:
        return E2bListenPlan(address, path, None)
    try:
        host = tcp_host(address)
    except ListenError:
        raise ListenError(
            f"--e2b-listen {address!r}: expected HOST:PORT, [IPV6]:PORT or unix:/path"
        ) from None
    if tls is None and not is_loopback(host):
        raise ListenError(
            f"--e2b-listen {address}: not a loopback address, so it needs TLS (--tls-cert and --tls-key); "
            "the API key must not cross a network in clear"
        )
    if tls is not None:
        _check_tls(tls)
    return E2bListenPlan(address, None, tls)


def _check_tls(tls: TlsFiles) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(tls.cert, tls.key)
        if tls.client_ca is not None:
            context.load_verify_locations(cafile=tls.client_ca)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise ListenError(f"--e2b-listen: TLS files unusable ({exc})") from None


def bind(listen: E2bListenPlan) -> socket.socket:
    """The listening socket (OSError: the address is taken, not ours, ...)."""
    if listen.unix is not None:
        return _bind_unix(listen.unix)
    host = tcp_host(listen.address)
    port = int(listen.address.rpartition(":")[2])
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    return sock


def _bind_unix(path: Path) -> socket.socket:
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # a stale socket from a previous run; we hold the data-dir lock
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # 0600 from birth: never open to others, even for an instant
    try:
        sock.bind(str(path))
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    finally:
        os.umask(old)
    return sock


def bound_address(sock: socket.socket) -> str:
    name = sock.getsockname()
    if isinstance(name, str):
        return f"unix:{name}"
    host, port = name[0], name[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def hypercorn_config(sock: socket.socket, tls: TlsFiles | None) -> Config:
    config = Config()
    # hypercorn adopts the socket (and closes it when it stops): hand over the descriptor.
    config.bind = [f"fd://{sock.detach()}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("clawpot.e2b.http")
    config.graceful_timeout = limits.E2B_SHUTDOWN_GRACE
    config.keep_alive_timeout = limits.E2B_KEEP_ALIVE_TIMEOUT
    if tls is not None:
        config.certfile = str(tls.cert)
        config.keyfile = str(tls.key)
        if tls.client_ca is not None:
            config.ca_certs = str(tls.client_ca)
            config.verify_mode = ssl.CERT_REQUIRED
    return config


async def serve(app: ASGIApp, sock: socket.socket, tls: TlsFiles | None, stop: asyncio.Event) -> None:
    """Serve ``app`` on ``sock`` until ``stop`` is set, then let requests in flight finish (grace)."""
    address = bound_address(sock)
    unix = sock.family == socket.AF_UNIX
    config = hypercorn_config(sock, tls)
    log.info("E2B API listening on %s%s", address, " (TLS)" if tls is not None else "")
    try:
        await hypercorn_serve(cast(ASGIFramework, app), config, shutdown_trigger=stop.wait, mode="asgi")
    finally:
        if unix:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(address.removeprefix("unix:"))
