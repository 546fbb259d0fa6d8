"""`clawpot assets install | status | inject`: the guest kernel, root filesystem and Firecracker."""

from __future__ import annotations

import json
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import click
from rich.console import Console
from rich.table import Table

from clawpot import paths
from clawpot.assets.errors import AssetError, BuildError
from clawpot.assets.inject import has_python, inject
from clawpot.assets.install import Installer, status
from clawpot.assets.manifest import State
from clawpot.assets.progress import Reporter


@dataclass(frozen=True)
class _Dirs:
    data: Path
    cache: Path


def _fail(exc: AssetError) -> None:
    err = Console(stderr=True)
    err.print(f"[red]error:[/] {exc}", highlight=False)
    if isinstance(exc, BuildError) and exc.tail:
        err.print(f"[dim]--- last lines of {exc.log} ---[/]", highlight=False)
        err.print(exc.tail.rstrip(), highlight=False, markup=False)
    sys.exit(1)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@click.group()
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help=f"Data directory (env ${paths.DATA_DIR_ENV}, default {paths.DEFAULT_DATA_DIR}).",
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help=f"Build cache (env ${paths.CACHE_DIR_ENV}, default {paths.DEFAULT_CACHE_DIR}).",
)
@click.pass_context
def assets(ctx: click.Context, data_dir: Path | None, cache_dir: Path | None) -> None:
    """Guest kernel, root filesystem and Firecracker: install, verify, inject."""
    ctx.obj = _Dirs(paths.data_dir(data_dir), paths.cache_dir(cache_dir))


@assets.command("install")
@click.option(
    "-j", "--jobs", type=click.IntRange(min=0), default=0, help="Parallel kernel build jobs (0: one per CPU)."
)
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@click.pass_obj
def install_command(dirs: _Dirs, jobs: int, quiet: bool) -> None:
    """Build (or take from the cache) and install every asset. Safe to run again: only repairs and updates."""
    installer = Installer(dirs.data, dirs.cache, Reporter(quiet=quiet), jobs=jobs)
    # A TERM (CI timeout, systemd stop) cleans up like Ctrl+C: stop the build, remove its temp files.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        report = installer.install()
    except AssetError as exc:
        _fail(exc)
        return
    except OSError as exc:
        hint = " (run as root, or pass --data-dir/--cache-dir)" if isinstance(exc, PermissionError) else ""
        _fail(AssetError(f"{exc.strerror}: {exc.filename}{hint}"))
        return
    except KeyboardInterrupt:
        Console(stderr=True).print("interrupted: the build was stopped; nothing was left half-installed")
        sys.exit(130)
    table = Table(title=f"assets in {installer.assets_dir}", title_justify="left")
    for column in ("asset", "result", "how"):
        table.add_column(column)
    for action in report.actions:
        table.add_row(action.name, action.what, action.how)
    console = Console()
    console.print(table)
    console.print(
        f"{'changed' if report.changed else 'nothing to do'} in {report.seconds:.2f} s", highlight=False
    )


@assets.command("status")
@click.option("--output", "-o", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.pass_obj
def status_command(dirs: _Dirs, output: str) -> None:
    """Verify every installed asset (sha256 against the manifest). Exit 1 if any is missing or corrupt."""
    checks = status(dirs.data)
    if output == "json":
        rows = [
            {
                "name": c.name,
                "path": str(c.path),
                "state": c.state.value,
                "detail": c.detail,
                "version": c.record.version if c.record else None,
                "source": c.record.source if c.record else None,
                "size": c.record.size if c.record else None,
                "sha256": c.record.sha256 if c.record else None,
                "inputs": c.record.inputs if c.record else None,
            }
            for c in checks
        ]
        click.echo(json.dumps({"assets": rows}, indent=2))
    else:
        table = Table(title=f"assets in {paths.assets_dir(dirs.data)}", title_justify="left")
        table.add_column("asset", no_wrap=True)
        table.add_column("state")
        table.add_column("version")
        table.add_column("size", justify="right", no_wrap=True)
        table.add_column("sha256", no_wrap=True)
        colors = {State.OK: "green", State.MISSING: "yellow", State.CORRUPT: "red"}
        for c in checks:
            state = f"[{colors[c.state]}]{c.state.value}[/]" + (f" [dim]({c.detail})[/]" if c.detail else "")
            rec = c.record
            table.add_row(
                c.name,
                state,
                rec.version if rec else "-",
                f"{rec.size / 1e6:.1f} MB" if rec else "-",
                rec.sha256[:12] if rec else "-",
            )
        Console().print(table)
    if any(c.state is not State.OK for c in checks):
        sys.exit(1)


@assets.command("inject")
@click.argument("image", type=click.Path(dir_okay=False, path_type=Path))
def inject_command(image: Path) -> None:
    """Put the Clawpot init and agent into an existing ext4 IMAGE, without mounting it.

    Boot it with the kernel command line from clawpot.assets.bootargs (init=/sbin/clawpot-init).
    """
    try:
        written = inject(image)
        python = has_python(image)
    except AssetError as exc:
        _fail(exc)
        return
    for path in written:
        click.echo(f"wrote {path}")
    if not python:
        click.echo(f"warning: {image} has no /usr/bin/python3: the agent cannot start", err=True)
