"""What the server listens on, checked before anything starts: unix sockets, TCP, TLS, the socket group.

Two kinds of listener, with different ways of knowing who calls:
- a **unix socket** is guarded by the filesystem: mode 0600 (root only), or 0660 for one group
  (``--socket-group``). Calls on it need no token.
- a **TCP** listener is open to every local user (and, off loopback, to the network), so every call
  on it must carry the API token (``auth``). Off loopback it must also be TLS, or the token and
  everything else would cross the network in clear: the server refuses to start otherwise.

Everything here is validated up front (``plan``), so a bad flag is a one-line error before the server
touches the data directory, VMs or the network. No gRPC here except the credentials object.
"""

from __future__ import annotations

import grp
import ipaddress
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from clawpot import limits


class ListenError(Exception):
    """A listen address, TLS file or socket group is unusable (the message is one line)."""


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for TCP listeners; with ``client_ca`` every client must present a certificate it signed."""

    cert: Path
    key: Path
    client_ca: Path | None = None


@dataclass(frozen=True)
class ListenPlan:
    unix: tuple[Path, ...]
    tcp: tuple[str, ...]
    socket_gid: int | None
    tls: grpc.ServerCredentials | None


def unix_socket_path(address: str) -> Path | None:
    """The filesystem path of a ``unix:`` listen address, else None."""
    if address.startswith("unix://"):
        return Path(address.removeprefix("unix://"))
    if address.startswith("unix:"):
        return Path(address.removeprefix("unix:"))
    return None


def tcp_host(address: str) -> str:
    """The host part of ``HOST:PORT`` / ``[V6]:PORT`` (brackets removed; empty for ``:PORT``)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ListenError(f"--listen {address!r}: expected HOST:PORT, [IPV6]:PORT or unix:/path")
    return host.removeprefix("[").removesuffix("]")


def is_loopback(host: str) -> bool:
    """Only literal loopback addresses and ``localhost`` count; any other name could resolve off-host."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def socket_gid(name: str) -> int:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise ListenError(f"--socket-group {name!r}: no such group") from None


def plan(listen: Sequence[str], *, tls: TlsFiles | None, socket_group: str | None) -> ListenPlan:
    unix: list[Path] = []
    tcp: list[str] = []
    for address in listen:
        path = unix_socket_path(address)
        if path is not None:
            unix.append(path)
            continue
        host = tcp_host(address)
        if tls is None and not is_loopback(host):
            raise ListenError(
                f"--listen {address}: not a loopback address, so it needs TLS (--tls-cert and --tls-key); "
                "the API token must not cross a network in clear"
            )
        tcp.append(address)
    if socket_group is not None and not unix:
        raise ListenError("--socket-group needs a unix:/path listener")
    return ListenPlan(
        unix=tuple(unix),
        tcp=tuple(tcp),
        socket_gid=socket_gid(socket_group) if socket_group is not None else None,
        tls=server_credentials(tls) if tls is not None else None,
    )


def server_credentials(tls: TlsFiles) -> grpc.ServerCredentials:
    cert, key = _read_pem(tls.cert, "--tls-cert"), _read_pem(tls.key, "--tls-key")
    client_ca = _read_pem(tls.client_ca, "--tls-client-ca") if tls.client_ca is not None else None
    # gRPC only reads the PEM at the first handshake; check the pair (and the CA) now with the stdlib,
    # so a wrong file is a start-up error rather than every client failing later.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(tls.cert, tls.key)
    except (ssl.SSLError, ValueError) as exc:
        raise ListenError(
            f"--tls-cert {tls.cert} / --tls-key {tls.key}: not a matching PEM pair ({exc})"
        ) from None
    if tls.client_ca is not None:
        try:
            context.load_verify_locations(cafile=tls.client_ca)
        except (ssl.SSLError, ValueError) as exc:
            raise ListenError(f"--tls-client-ca {tls.client_ca}: not PEM certificates ({exc})") from None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def _read_pem(path: Path, flag: str) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(limits.TLS_PEM_MAX_BYTES + 1)
    except OSError as exc:
        raise ListenError(f"{flag} {path}: {exc.strerror}") from None
    if len(data) > limits.TLS_PEM_MAX_BYTES:
        raise ListenError(f"{flag} {path}: larger than {limits.TLS_PEM_MAX_BYTES} bytes, not a PEM file")
    return data
