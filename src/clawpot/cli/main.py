"""`clawpot`: the command-line client.

Each command group lives in its own module and is attached here; this file only wires them up.
"""

from __future__ import annotations

import click

from clawpot import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="clawpot")
def cli() -> None:
    """Clawpot: run untrusted code in lightweight microVMs.

    Exit codes: 0 success, 1 operation failed, 2 bad usage.
    """


def _register() -> None:
    from clawpot.cli.assets import assets

    cli.add_command(assets)


_register()


def main() -> None:
    cli()
