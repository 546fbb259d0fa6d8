"""``/metrics`` over HTTP: prometheus_client's own server, on the address ``--metrics-listen`` names.

The same rule as the API's TCP listeners (``clawpot.server.listeners``): a loopback address is served
in clear (any local user can read the metrics: VM ids, counts, CPU and memory; no secrets, nothing to
change), any other address only over TLS with the server's ``--tls-cert``/``--tls-key``, and with
``--tls-client-ca`` every scraper must present a client certificate signed by it (the way to keep the
network from reading them). Checked before the server starts anything (``check_address``).

The server runs in its own threads (prometheus_client's WSGI server); the node collector hops to the
event loop only for its state sample (``collector.on_loop``).
"""

from __future__ import annotations

from dataclasses import dataclass
from threading import Thread
from wsgiref.simple_server import WSGIServer

from prometheus_client import start_http_server
from prometheus_client.registry import CollectorRegistry

from clawpot.server.listeners import ListenError, TlsFiles, is_loopback, tcp_host


@dataclass(frozen=True)
class MetricsAddress:
    host: str
    port: int
    tls: TlsFiles | None


def check_address(address: str, tls: TlsFiles | None) -> MetricsAddress:
    """``HOST:PORT`` for ``--metrics-listen``; a non-loopback HOST needs TLS (ListenError otherwise)."""
    if address.startswith("unix:"):
        raise ListenError(f"--metrics-listen {address!r}: expected HOST:PORT (Prometheus scrapes over TCP)")
    try:
        host = tcp_host(address)
    except ListenError:
        raise ListenError(f"--metrics-listen {address!r}: expected HOST:PORT or [IPV6]:PORT") from None
    port = int(address.rpartition(":")[2])
    if port > 65535:  # 0 picks a free port (tests)
        raise ListenError(f"--metrics-listen {address!r}: port must be 0-65535")
    if not host:
        raise ListenError(f"--metrics-listen {address!r}: name the address (127.0.0.1:PORT for loopback)")
    loopback = is_loopback(host)
    if not loopback and tls is None:
        raise ListenError(
            f"--metrics-listen {address}: not a loopback address, so it needs TLS (--tls-cert and --tls-key;"
            " --tls-client-ca to require scrapers' certificates)"
        )
    return MetricsAddress(host, port, None if loopback else tls)


class MetricsServer:
    def __init__(self, address: MetricsAddress, registry: CollectorRegistry) -> None:
        tls = address.tls
        self._server: WSGIServer
        self._thread: Thread
        self._server, self._thread = start_http_server(
            address.port,
            addr=address.host,
            registry=registry,
            certfile=str(tls.cert) if tls else None,
            keyfile=str(tls.key) if tls else None,
            client_cafile=str(tls.client_ca) if tls and tls.client_ca else None,
            client_auth_required=bool(tls and tls.client_ca),
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
