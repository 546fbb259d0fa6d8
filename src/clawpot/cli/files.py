"""`clawpot cp SRC DST`: copy a file into or out of a VM (``ID:/path`` on one side)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import click

from clawpot.cli.connection import EXIT_USAGE, die, stub
from clawpot.v1 import vm_pb2

CHUNK = 256 * 1024


def split_remote(spec: str) -> tuple[str, str] | None:
    """``ID:/path`` → (ID, /path); a local path (no colon before the first slash) → None."""
    head, sep, tail = spec.partition(":")
    if sep and head and "/" not in head:
        return head, tail
    return None


def _upload_requests(vm_id: str, local: Path, remote: str) -> Iterator[vm_pb2.UploadFileRequest]:
    mode = local.stat().st_mode & 0o7777
    yield vm_pb2.UploadFileRequest(header=vm_pb2.UploadHeader(vm_id=vm_id, path=remote, mode=mode))
    with local.open("rb") as f:
        while chunk := f.read(CHUNK):
            yield vm_pb2.UploadFileRequest(chunk=chunk)


@click.command()
@click.argument("src")
@click.argument("dst")
@click.pass_obj
def cp(server: str, src: str, dst: str) -> None:
    """Copy SRC to DST; exactly one of them is ID:/path in a VM."""
    remote_src, remote_dst = split_remote(src), split_remote(dst)
    if (remote_src is None) == (remote_dst is None):
        die("exactly one of SRC and DST must be ID:/path", EXIT_USAGE)
    if remote_dst is not None:
        local = Path(src)
        if not local.is_file():
            die(f"{src}: not a readable file", EXIT_USAGE)
        vm_id, path = remote_dst
        with stub(server) as api:
            api.UploadFile(_upload_requests(vm_id, local, path))
        return
    assert remote_src is not None
    vm_id, path = remote_src
    target = Path(dst)
    if target.is_dir():
        target = target / Path(path).name
    # Download to a temp file beside the target and rename: a failed copy never leaves a partial file.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent or Path("."))
    try:
        with stub(server) as api, os.fdopen(fd, "wb") as out:
            for response in api.DownloadFile(vm_pb2.DownloadFileRequest(vm_id=vm_id, path=path)):
                if response.WhichOneof("kind") == "info":
                    os.fchmod(out.fileno(), response.info.mode & 0o7777 or 0o644)
                else:
                    out.write(response.chunk)
        os.replace(tmp_name, target)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
