"""`clawpot-server`: run the gRPC service."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import NoReturn

import click

from clawpot import limits
from clawpot.network.dnsforward import Upstream
from clawpot.node.datadir import NodeError
from clawpot.node.node import NodeConfig
from clawpot.paths import data_dir as default_data_dir
from clawpot.server import logfmt
from clawpot.server.apitoken import TokenError
from clawpot.server.app import DEFAULT_LISTEN, ServerConfig, serve
from clawpot.server.listeners import ListenError, TlsFiles
from clawpot.service import poolspec
from clawpot.vmm.firecracker.jail import NO_JAILER_WARNING
from clawpot.vmm.spec import BackendKind


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--listen",
    "listen",
    multiple=True,
    metavar="ADDR",
    help=(
        f"HOST:PORT or unix:/path (repeatable). Default {DEFAULT_LISTEN}. Calls over TCP need the API token "
        "(<data-dir>/api-token); a non-loopback HOST also needs --tls-cert/--tls-key. Unix sockets are 0600."
    ),
)
@click.option(
    "--socket-group",
    metavar="GROUP",
    help="Let this group use the unix sockets too (mode 0660, group GROUP) without a token.",
)
@click.option(
    "--tls-cert",
    type=click.Path(path_type=Path, dir_okay=False),
    metavar="PEM",
    help="Serve TCP listeners over TLS with this certificate chain (with --tls-key).",
)
@click.option(
    "--tls-key", type=click.Path(path_type=Path, dir_okay=False), metavar="PEM", help="The key of --tls-cert."
)
@click.option(
    "--tls-client-ca",
    type=click.Path(path_type=Path, dir_okay=False),
    metavar="PEM",
    help="Require TLS clients to present a certificate signed by these CAs (the token is still needed).",
)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False),
    envvar="CLAWPOT_DATA_DIR",
    help="Assets, VM directories and state.db live here (default /var/lib/clawpot).",
)
@click.option(
    "--vmm",
    type=click.Choice(["auto", "firecracker", "qemu"]),
    default="auto",
    show_default=True,
    help="Default hypervisor for VMs that do not ask for one; auto probes the host's KVM.",
)
@click.option(
    "--bridge", default=limits.DEFAULT_BRIDGE, show_default=True, help="Bridge the VMs' TAPs attach to."
)
@click.option("--subnet", default=limits.DEFAULT_SUBNET, show_default=True, help="VM subnet; gateway is .1.")
@click.option("--no-network", is_flag=True, help="Create VMs without network interfaces (no bridge/NAT).")
@click.option(
    "--ready-timeout",
    type=click.FloatRange(min=1),
    default=limits.DEFAULT_READY_TIMEOUT,
    show_default=True,
    help="Seconds a new VM's agent has to answer before the VM goes to Error.",
)
@click.option(
    "--agent-timeout",
    type=click.FloatRange(min=0.1),
    default=limits.DEFAULT_AGENT_TIMEOUT,
    show_default=True,
    help="Seconds a running VM's agent has to answer before a call fails with UNAVAILABLE.",
)
@click.option(
    "--memory-overcommit",
    type=click.FloatRange(min=0.1, max=100.0),
    default=limits.DEFAULT_MEMORY_OVERCOMMIT,
    show_default=True,
    metavar="RATIO",
    help="Admit VMs while committed guest memory (+ per-VM overhead) stays within MemTotal x RATIO.",
)
@click.option(
    "--stop-vms-on-exit",
    is_flag=True,
    help="On SIGTERM stop every VM. Default: leave them running; the next start adopts them.",
)
# --- guest DNS (network/dnsforward.py) ---
@click.option(
    "--dns-upstream",
    "dns_upstream",
    multiple=True,
    metavar="IP[:PORT]",
    help="Where the gateway's DNS forwarder sends guests' queries (repeatable); default: /etc/resolv.conf.",
)
# --- the E2B SDK's front door (e2b/) and VM lifetimes ---
@click.option(
    "--e2b-listen",
    metavar="ADDR",
    help=(
        "Also serve the E2B SDK's API (control plane and envd) on HOST:PORT or unix:/path, HTTP/1.1 and "
        "HTTP/2. X-API-Key must be the API token; a non-loopback HOST needs --tls-cert/--tls-key."
    ),
)
@click.option(
    "--vm-timeout",
    type=click.IntRange(limits.MIN_VM_TIMEOUT, limits.MAX_VM_TIMEOUT),
    default=None,
    metavar="SECONDS",
    help="Delete VMs created without --timeout this long after their create. Default: no lifetime.",
)
# --- operations: metrics and logs (metrics/, server/logfmt.py) ---
@click.option(
    "--metrics-listen",
    metavar="HOST:PORT",
    help=(
        "Serve Prometheus metrics at http://HOST:PORT/metrics. A non-loopback HOST needs --tls-cert and "
        "--tls-key (then https; --tls-client-ca requires scrapers' certificates)."
    ),
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Log lines as text, or one JSON object per line (one line per API call, with its fields).",
)
# --- the warm pool (service/pool.py) ---
@click.option(
    "--pool",
    "pool_spec",
    metavar="SPEC",
    help=(
        "Keep VMs ready for CreateVm: VCPUSxMEMORY:COUNT[,...], e.g. 1x256:4 (four VMs of 1 vCPU, 256 MiB), "
        "restored from a snapshot the server takes of a freshly booted VM. A matching create takes one."
    ),
)
@click.option(
    "--pool-state",
    type=click.Choice(["paused", "running"]),
    default="paused",
    show_default=True,
    help="Keep the warm pool's VMs paused (no CPU while they wait; the faster hand-out measured) or running.",
)
# --- defence in depth (vmm/firecracker/jail.py) ---
@click.option(
    "--no-jailer",
    is_flag=True,
    help="Development only: run Firecracker without its jailer (as root, no chroot, no PID namespace).",
)
@click.option("--verbose", "-v", is_flag=True, help="Debug logging.")
def main(
    listen: tuple[str, ...],
    socket_group: str | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_client_ca: Path | None,
    data_dir: Path | None,
    vmm: str,
    bridge: str,
    subnet: str,
    no_network: bool,
    ready_timeout: float,
    agent_timeout: float,
    memory_overcommit: float,
    stop_vms_on_exit: bool,
    dns_upstream: tuple[str, ...],
    e2b_listen: str | None,
    vm_timeout: int | None,
    metrics_listen: str | None,
    log_format: str,
    pool_spec: str | None,
    pool_state: str,
    no_jailer: bool,
    verbose: bool,
) -> None:
    """Serve the Clawpot API: create, list, delete VMs and exec/copy files in them."""
    logfmt.configure(log_format, verbose=verbose)
    if (tls_cert is None) != (tls_key is None):
        _fail("--tls-cert and --tls-key go together")
    if tls_client_ca is not None and tls_cert is None:
        _fail("--tls-client-ca needs --tls-cert and --tls-key")
    try:
        upstreams = tuple(Upstream.parse(text) for text in dns_upstream)
    except ValueError as exc:
        _fail(str(exc))
    tls = TlsFiles(tls_cert, tls_key, tls_client_ca) if tls_cert is not None and tls_key is not None else None
    try:
        pool = poolspec.parse(pool_spec) if pool_spec is not None else []
    except ValueError as exc:
        _fail(f"--pool: {exc}")
    if no_jailer:
        click.echo(NO_JAILER_WARNING.format(program="clawpot-server"), err=True)
    config = ServerConfig(
        listen=listen or (DEFAULT_LISTEN,),
        tls=tls,
        socket_group=socket_group,
        e2b_listen=e2b_listen,
        vm_timeout=vm_timeout,
        stop_vms_on_exit=stop_vms_on_exit,
        memory_overcommit=memory_overcommit,
        metrics_listen=metrics_listen,
        pool=tuple(pool),
        pool_paused=pool_state == "paused",
        node=NodeConfig(
            data_dir=default_data_dir(data_dir),
            default_backend=None if vmm == "auto" else BackendKind(vmm),
            bridge=None if no_network else bridge,
            subnet=subnet,
            ready_timeout=ready_timeout,
            agent_timeout=agent_timeout,
            dns_upstreams=upstreams,
            use_jailer=not no_jailer,
        ),
    )
    try:
        asyncio.run(serve(config))
    except (NodeError, ListenError, TokenError, OSError) as exc:
        _fail(str(exc))


def _fail(message: str) -> NoReturn:
    click.echo(f"clawpot-server: {message}", err=True)
    sys.exit(1)
