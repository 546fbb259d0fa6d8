"""Reaching the server from the CLI: URLs, credentials (API token, TLS), gRPC errors as one-line messages.

How a server URL is reached:
- ``unix:/path`` / ``unix:///path``: a plain channel; the socket's file mode is the access control,
  so no token is sent.
- ``HOST:PORT`` (also ``http://`` / ``grpc://``), HOST a loopback address: plaintext with gRPC's
  local-TCP credentials, which carry the token and refuse to connect anywhere but loopback, so the
  token never crosses a network in clear.
- ``https://HOST:PORT``, or any ``HOST:PORT`` when ``--tls-ca`` or ``--tls-cert`` is given: TLS,
  verified against that CA (or the system's roots), with ``--tls-cert``/``--tls-key`` as the client
  certificate where the server asks for one.

The token over TCP comes from, first to last: ``--token-file PATH``; ``$CLAWPOT_TOKEN``; the file
``<data-dir>/api-token`` (``--data-dir`` / ``$CLAWPOT_DATA_DIR``) if this user may read it. An explicit
flag wins over the environment, which wins over the default file.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import click

# gRPC's C core logs a failed TLS handshake at INFO on stderr; the CLI says it in one line instead.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
import grpc

from clawpot import limits, paths
from clawpot.cli.terminal import safe
from clawpot.server.apitoken import TokenError, read_token, valid_token
from clawpot.server.listeners import is_loopback
from clawpot.v1 import vm_pb2_grpc

DEFAULT_SERVER = "127.0.0.1:50051"
SERVER_ENV = "CLAWPOT_SERVER"
TOKEN_ENV = "CLAWPOT_TOKEN"
TLS_CA_ENV = "CLAWPOT_TLS_CA"
TLS_CERT_ENV = "CLAWPOT_TLS_CERT"
TLS_KEY_ENV = "CLAWPOT_TLS_KEY"
_META_KEY = "clawpot.connection"

# Exit codes shared by every client command (exec passes the command's own code through instead).
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3


@dataclass
class ClientOptions:
    """The connection flags of ``clawpot`` (kept in the click context's ``meta`` for every command)."""

    data_dir: Path | None = None
    token_file: Path | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # Why no token could be found, for the UNAUTHENTICATED hint (set once a TCP channel was opened).
    token_problem: str | None = field(default=None, compare=False)

    def install(self, ctx: click.Context) -> None:
        ctx.meta[_META_KEY] = self


def client_options() -> ClientOptions:
    ctx = click.get_current_context(silent=True)
    options = ctx.meta.get(_META_KEY) if ctx is not None else None
    if not isinstance(options, ClientOptions):
        options = ClientOptions()
        if ctx is not None:
            options.install(ctx)
    return options


@dataclass(frozen=True)
class Target:
    address: str  # what gRPC dials
    kind: str  # "unix", "tcp" (plaintext, loopback only) or "tls"


def parse_target(url: str, options: ClientOptions) -> Target:
    """Accept ``host:port``, ``http://host:port``, ``https://host:port``, ``unix:/path``, ``unix:///path``."""
    if url.startswith("unix:"):
        return Target(url, "unix")
    if url.startswith("https://"):
        return Target(url.removeprefix("https://").rstrip("/"), "tls")
    address = url
    for prefix in ("http://", "grpc://"):
        address = address.removeprefix(prefix)
    address = address.rstrip("/")
    wants_tls = options.tls_ca is not None or options.tls_cert is not None
    return Target(address, "tls" if wants_tls else "tcp")


def grpc_target(url: str) -> str:
    return parse_target(url, client_options()).address


def open_channel(url: str) -> grpc.Channel:
    """A channel to the server at ``url`` with the credentials its kind needs (see the module doc)."""
    options = client_options()
    target = parse_target(url, options)
    if target.kind == "unix":
        return grpc.insecure_channel(target.address)
    if target.kind == "tcp":
        host = target.address.rpartition(":")[0].removeprefix("[").removesuffix("]")
        if not is_loopback(host):
            die(
                f"{url} is not a loopback address: reach it over TLS (https://{target.address}, or "
                f"--tls-ca / ${TLS_CA_ENV}) so the API token is not sent in clear",
                EXIT_USAGE,
            )
        transport = grpc.local_channel_credentials(grpc.LocalConnectionType.LOCAL_TCP)
    else:
        transport = grpc.ssl_channel_credentials(
            root_certificates=_read_pem(options.tls_ca, "--tls-ca"),
            private_key=_read_pem(options.tls_key, "--tls-key"),
            certificate_chain=_read_pem(options.tls_cert, "--tls-cert"),
        )
    token = find_token(options)
    if token is not None:
        transport = grpc.composite_channel_credentials(transport, grpc.access_token_call_credentials(token))
    return grpc.secure_channel(target.address, transport)


def find_token(options: ClientOptions) -> str | None:
    """The API token to send over TCP (module doc for the order), or None (and why, in the options)."""
    if options.token_file is not None:
        try:
            return read_token(options.token_file)
        except TokenError as exc:
            die(f"--token-file: {exc}", EXIT_USAGE)
        except OSError as exc:
            die(f"--token-file {options.token_file}: {exc.strerror}", EXIT_USAGE)
    env = os.environ.get(TOKEN_ENV, "").strip()
    if env:
        if not valid_token(env):
            die(
                f"${TOKEN_ENV} is not an API token ({limits.API_TOKEN_MIN_CHARS}-{limits.API_TOKEN_MAX_CHARS}"
                " printable characters, no spaces)",
                EXIT_USAGE,
            )
        return env
    path = paths.api_token(paths.data_dir(options.data_dir))
    try:
        return read_token(path)
    except PermissionError:
        options.token_problem = f"{path} is not readable by this user"
    except FileNotFoundError:
        options.token_problem = f"no {path} (wrong --data-dir?)"
    except (TokenError, OSError) as exc:
        options.token_problem = str(exc)
    return None


def _read_pem(path: Path | None, flag: str) -> bytes | None:
    if path is None:
        return None
    try:
        with path.open("rb") as f:
            return f.read(limits.TLS_PEM_MAX_BYTES)
    except OSError as exc:
        die(f"{flag} {path}: {exc.strerror}", EXIT_USAGE)


@contextmanager
def stub(server: str) -> Iterator[vm_pb2_grpc.VmServiceStub]:
    channel = open_channel(server)
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
    if is_connect_failure(exc) and "CERTIFICATE_VERIFY_FAILED" in (details or ""):
        die(
            f"TLS with {server} failed: its certificate is not trusted or does not name that address "
            f"(--tls-ca / ${TLS_CA_ENV})",
            EXIT_UNREACHABLE,
        )
    if is_connect_failure(exc):
        die(
            f"cannot reach clawpot-server at {server} (is it running? set --server or ${SERVER_ENV})",
            EXIT_UNREACHABLE,
        )
    name = code.name if code is not None else "ERROR"
    # The first line only (a VM error can quote a console tail); split on "\n" alone, as splitlines()
    # would also cut at "\r" and hide what follows it instead of showing it escaped.
    first_line = (details or "").strip().split("\n")[0] or "no details"
    if code is grpc.StatusCode.UNAUTHENTICATED:
        problem = client_options().token_problem
        die(
            f"{name}: {first_line} [{problem + '; ' if problem else ''}run `clawpot token` as root, "
            f"or set ${TOKEN_ENV}]",
            EXIT_FAILED,
        )
    die(f"{name}: {first_line}", EXIT_FAILED)


def _is_connect_failure(details: str) -> bool:
    markers = (
        "failed to connect",
        "Connection refused",
        "No such file",
        "connections to all backends",
        "DNS resolution failed",
        "Socket closed",
        "handshake failed",
    )
    return any(m in details for m in markers)


def die(message: str, code: int = EXIT_FAILED) -> NoReturn:
    """One line on stderr (control characters escaped: server and guest text passes here), then exit."""
    click.echo(f"clawpot: {safe(message)}", err=True)
    sys.exit(code)
