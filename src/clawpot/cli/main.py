"""`clawpot`: the command-line client.

Each command group lives in its own module and is attached here; this file only wires them up.
"""

from __future__ import annotations

import click

from clawpot import __version__
from clawpot.cli.connection import DEFAULT_SERVER, SERVER_ENV


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="clawpot")
@click.option(
    "--server",
    envvar=SERVER_ENV,
    default=DEFAULT_SERVER,
    show_default=True,
    metavar="URL",
    help=f"clawpot-server address: HOST:PORT or unix:/path/to/socket (env ${SERVER_ENV}).",
)
@click.pass_context
def cli(ctx: click.Context, server: str) -> None:
    """Clawpot: run untrusted code in lightweight microVMs.

    \b
    Exit codes: 0 success, 1 the operation failed, 2 bad usage, 3 server unreachable.
    `exec` exits with the command's own exit code (128+N if it died of signal N, 124 on --timeout).
    """
    ctx.obj = server


def _register() -> None:
    from clawpot.cli.assets import assets
    from clawpot.cli.doctor import doctor
    from clawpot.cli.exec import exec_command
    from clawpot.cli.files import cp
    from clawpot.cli.vms import create, delete, get, list_vms

    for command in (assets, doctor, create, list_vms, get, delete, exec_command, cp):
        cli.add_command(command)


_register()


def main() -> None:
    cli()
