"""`clawpot`: the command-line client.

Each command group lives in its own module and is attached here; this file only wires them up.
"""

from __future__ import annotations

from pathlib import Path

import click

from clawpot import __version__, paths
from clawpot.cli.connection import (
    DEFAULT_SERVER,
    SERVER_ENV,
    TLS_CA_ENV,
    TLS_CERT_ENV,
    TLS_KEY_ENV,
    TOKEN_ENV,
    ClientOptions,
)

_PEM = click.Path(path_type=Path, dir_okay=False)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="clawpot")
@click.option(
    "--server",
    envvar=SERVER_ENV,
    default=DEFAULT_SERVER,
    show_default=True,
    metavar="URL",
    help=(
        f"clawpot-server address: HOST:PORT, https://HOST:PORT (TLS) or unix:/path/to/socket "
        f"(env ${SERVER_ENV})."
    ),
)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False),
    envvar=paths.DATA_DIR_ENV,
    help="Where to find the API token file (<data-dir>/api-token; default /var/lib/clawpot).",
)
@click.option(
    "--token-file",
    type=_PEM,
    metavar="PATH",
    help=f"Read the API token from PATH (wins over ${TOKEN_ENV}, which wins over <data-dir>/api-token).",
)
@click.option("--tls-ca", type=_PEM, envvar=TLS_CA_ENV, metavar="PEM", help="Talk TLS, trusting these CAs.")
@click.option("--tls-cert", type=_PEM, envvar=TLS_CERT_ENV, metavar="PEM", help="TLS client certificate.")
@click.option("--tls-key", type=_PEM, envvar=TLS_KEY_ENV, metavar="PEM", help="Key of --tls-cert.")
@click.pass_context
def cli(
    ctx: click.Context,
    server: str,
    data_dir: Path | None,
    token_file: Path | None,
    tls_ca: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
) -> None:
    """Clawpot: run untrusted code in lightweight microVMs.

    \b
    Calls over TCP carry the API token: $CLAWPOT_TOKEN, or the server's <data-dir>/api-token file
    (root only; `clawpot token` prints it). Unix sockets need no token.
    Exit codes: 0 success, 1 the operation failed, 2 bad usage, 3 server unreachable.
    `exec` exits with the command's own exit code (128+N if it died of signal N, 124 on --timeout).
    """
    if (tls_cert is None) != (tls_key is None):
        raise click.UsageError("--tls-cert and --tls-key go together")
    ClientOptions(data_dir, token_file, tls_ca, tls_cert, tls_key).install(ctx)
    ctx.obj = server


def _register() -> None:
    from clawpot.cli.apitoken import token
    from clawpot.cli.assets import assets
    from clawpot.cli.doctor import doctor
    from clawpot.cli.exec import exec_command
    from clawpot.cli.files import cp
    from clawpot.cli.network import network, port
    from clawpot.cli.observe import events, logs
    from clawpot.cli.vms import (
        create,
        delete,
        fork,
        get,
        list_vms,
        pause,
        resume,
        snapshot,
        snapshots,
        timeout,
    )

    commands = (
        *(assets, doctor, create, list_vms, get, delete, pause, resume, snapshot, snapshots, fork, timeout),
        *(exec_command, cp, token, network, port, logs, events),
    )
    for command in commands:
        cli.add_command(command)


_register()


def main() -> None:
    cli()
