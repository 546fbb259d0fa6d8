"""Where Clawpot keeps its files on the host.

Everything lives under one data directory (default ``/var/lib/clawpot``), overridable by the
``--data-dir`` flag of every command and by the ``CLAWPOT_DATA_DIR`` environment variable:

    <data>/assets/      kernel, base rootfs, firecracker, jailer, manifest.json
    <data>/vms/<id>/    one directory per VM (sockets, logs, serial console, writable layer)
    <data>/state.db     the server's VM registry
    <data>/api-token    the API token TCP clients must send (0600; made at the server's first start)

Builds are cached separately (``CLAWPOT_CACHE_DIR``, default ``/var/cache/clawpot``), keyed by a hash
of their inputs, so reinstalling or switching between versions never rebuilds what was built before.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_DIR_ENV = "CLAWPOT_DATA_DIR"
CACHE_DIR_ENV = "CLAWPOT_CACHE_DIR"
DEFAULT_DATA_DIR = Path("/var/lib/clawpot")
DEFAULT_CACHE_DIR = Path("/var/cache/clawpot")


def data_dir(override: Path | str | None = None) -> Path:
    """The data directory: the explicit override, else ``$CLAWPOT_DATA_DIR``, else the default."""
    if override:
        return Path(override)
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env) if env else DEFAULT_DATA_DIR


def cache_dir(override: Path | str | None = None) -> Path:
    if override:
        return Path(override)
    env = os.environ.get(CACHE_DIR_ENV)
    return Path(env) if env else DEFAULT_CACHE_DIR


def assets_dir(data: Path | None = None) -> Path:
    return (data or data_dir()) / "assets"


def vms_dir(data: Path | None = None) -> Path:
    return (data or data_dir()) / "vms"


def snapshots_dir(data: Path | None = None) -> Path:
    return (data or data_dir()) / "snapshots"


def state_db(data: Path | None = None) -> Path:
    return (data or data_dir()) / "state.db"


def api_token(data: Path | None = None) -> Path:
    return (data or data_dir()) / "api-token"
