"""`clawpot token`: print the server's API token to whoever may read its file (root, by default)."""

from __future__ import annotations

from pathlib import Path

import click

from clawpot import paths
from clawpot.cli.connection import EXIT_FAILED, client_options, die
from clawpot.server.apitoken import TokenError, read_token


@click.command("token")
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False),
    envvar=paths.DATA_DIR_ENV,
    help="The server's data directory (default /var/lib/clawpot); the token is its api-token file.",
)
def token(data_dir: Path | None) -> None:
    """Print the API token that calls over TCP must carry (export it as CLAWPOT_TOKEN)."""
    path = paths.api_token(paths.data_dir(data_dir or client_options().data_dir))
    try:
        value = read_token(path)
    except PermissionError:
        die(
            f"cannot read {path}: permission denied (it is the server user's alone: run as root)", EXIT_FAILED
        )
    except FileNotFoundError:
        die(f"no API token at {path}: start clawpot-server with this data directory first", EXIT_FAILED)
    except (TokenError, OSError) as exc:
        die(str(exc), EXIT_FAILED)
    click.echo(value)
