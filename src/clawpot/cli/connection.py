"""Reaching the server from the CLI: URL handling and turning gRPC errors into one-line messages."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import click
import grpc

from clawpot.v1 import vm_pb2_grpc

DEFAULT_SERVER = "127.0.0.1:50051"
SERVER_ENV = "CLAWPOT_SERVER"

# Exit codes shared by every client command (exec passes the command's own code through instead).
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3


def grpc_target(url: str) -> str:
    """Accept ``host:port``, ``http://host:port``, ``unix:/path`` and ``unix:///path``."""
    for prefix in ("http://", "grpc://"):
        if url.startswith(prefix):
            return url.removeprefix(prefix).rstrip("/")
    return url


@contextmanager
def stub(server: str) -> Iterator[vm_pb2_grpc.VmServiceStub]:
    channel = grpc.insecure_channel(grpc_target(server))
    try:
        yield vm_pb2_grpc.VmServiceStub(channel)
    except grpc.RpcError as exc:
        fail_rpc(exc, server)
    finally:
        channel.close()


def is_connect_failure(exc: grpc.RpcError) -> bool:
    """The transport failed (no server, or the connection dropped), as opposed to a server's answer."""
    if not isinstance(exc, grpc.Call) or exc.code() is not grpc.StatusCode.UNAVAILABLE:
        return False
    return _is_connect_failure(exc.details() or "")


def fail_rpc(exc: grpc.RpcError, server: str) -> NoReturn:
    code = exc.code() if isinstance(exc, grpc.Call) else None
    details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
    if is_connect_failure(exc):
        die(
            f"cannot reach clawpot-server at {server} (is it running? set --server or ${SERVER_ENV})",
            EXIT_UNREACHABLE,
        )
    name = code.name if code is not None else "ERROR"
    die(f"{name}: {(details or '').splitlines()[0] if details else 'no details'}", EXIT_FAILED)


def _is_connect_failure(details: str) -> bool:
    markers = (
        "failed to connect",
        "Connection refused",
        "No such file",
        "connections to all backends",
        "DNS resolution failed",
        "Socket closed",
    )
    return any(m in details for m in markers)


def die(message: str, code: int = EXIT_FAILED) -> NoReturn:
    click.echo(f"clawpot: {message}", err=True)
    sys.exit(code)
