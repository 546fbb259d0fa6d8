"""`clawpot cp SRC DST`: copy a file into or out of a VM (``ID:/path`` on one side).

Out of a VM, the guest is untrusted, and so is everything it says about the file: the copy writes only
a regular file (it refuses a destination that exists as anything else, a symlink included), never
with setuid, setgid or sticky bits nor world-writable (and the umask applies), and stops at
``--max-size`` bytes counted as they arrive (the server stops at the same limit). It is written to a
temporary file in the destination's directory and renamed into place only when complete, so a failure
or an oversized file leaves nothing behind.
"""

from __future__ import annotations

import os
import re
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import click
import grpc

from clawpot import limits
from clawpot.agent_client.files import current_umask, safe_mode
from clawpot.cli.connection import EXIT_FAILED, EXIT_USAGE, die, stub
from clawpot.v1 import vm_pb2

CHUNK = 256 * 1024
_SIZE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def split_remote(spec: str) -> tuple[str, str] | None:
    """``ID:/path`` → (ID, /path); a local path (no colon before the first slash) → None."""
    head, sep, tail = spec.partition(":")
    if sep and head and "/" not in head:
        return head, tail
    return None


def parse_size(text: str) -> int:
    """``1048576``, ``512K``, ``10M``, ``1G``, ``2GiB`` → bytes (K, M, G, T are powers of 1024)."""
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(f"not a size: {text!r} (use bytes, or a number with K, M, G or T)")
    value = int(match[1]) * _UNITS[match[2].lower()]
    if value < 1:
        raise ValueError("the size must be at least 1 byte")
    return value


class _SizeParam(click.ParamType[int]):
    name = "SIZE"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_size(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def download_target(dst: str, remote_path: str) -> Path:
    """Where the copy goes; refuses (usage error) a destination that exists and is not a regular file."""
    target = Path(dst)
    if target.is_dir():  # a directory (or a link to one, the user's own): the file goes inside
        target = target / Path(remote_path).name
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        return target
    except OSError as exc:
        die(f"{target}: {exc.strerror or exc}", EXIT_USAGE)
    if stat.S_ISLNK(st.st_mode):
        die(f"{target} is a symlink; refusing to write through it", EXIT_USAGE)
    if not stat.S_ISREG(st.st_mode):
        die(f"{target} exists and is not a regular file; refusing to replace it", EXIT_USAGE)
    return target


def _upload_requests(vm_id: str, local: Path, remote: str) -> Iterator[vm_pb2.UploadFileRequest]:
    mode = local.stat().st_mode & 0o7777
    yield vm_pb2.UploadFileRequest(header=vm_pb2.UploadHeader(vm_id=vm_id, path=remote, mode=mode))
    with local.open("rb") as f:
        while chunk := f.read(CHUNK):
            yield vm_pb2.UploadFileRequest(chunk=chunk)


@click.command()
@click.argument("src")
@click.argument("dst")
@click.option(
    "--max-size",
    type=_SizeParam(),
    default=limits.DOWNLOAD_MAX_BYTES,
    show_default="1G",
    help="Out of a VM: refuse a file larger than this (bytes, or 512K, 10M, 2G).",
)
@click.pass_obj
def cp(server: str, src: str, dst: str, max_size: int) -> None:
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
    _download(server, vm_id, path, download_target(dst, path), max_size)


def _download(server: str, vm_id: str, path: str, target: Path, max_size: int) -> None:
    # A temp file beside the target (mode 0600 until complete), renamed over it at the end: a failed or
    # refused copy never leaves a partial file, and the rename replaces a symlink rather than following it.
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    except OSError as exc:
        die(f"cannot write in {target.parent}: {exc.strerror or exc}", EXIT_FAILED)
    try:
        mode = 0  # until the guest says: safe_mode gives 0644 for none
        received = 0
        with stub(server) as api, os.fdopen(fd, "wb") as out:
            request = vm_pb2.DownloadFileRequest(vm_id=vm_id, path=path, max_size=max_size)
            responses = api.DownloadFile(request)
            try:
                for response in responses:
                    if response.WhichOneof("kind") == "info":
                        mode = response.info.mode
                        if response.info.size > max_size:
                            _too_big(path, max_size, f"it is {response.info.size} bytes")
                        continue
                    # Counted here too: the size the guest reported is only its word.
                    received += len(response.chunk)
                    if received > max_size:
                        _too_big(path, max_size, f"more than {max_size} bytes arrived")
                    out.write(response.chunk)
            finally:
                if isinstance(responses, grpc.Future):
                    # Nothing more wanted; a no-op once the stream ended.
                    responses.cancel()  # type: ignore[no-untyped-call]
            os.fchmod(out.fileno(), safe_mode(mode, current_umask()))
        os.replace(tmp_name, target)
    except OSError as exc:  # disk full, target turned into a directory meanwhile, ...
        die(f"cannot write {target}: {exc.strerror or exc}", EXIT_FAILED)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)


def _too_big(path: str, max_size: int, detail: str) -> NoReturn:
    die(f"{path}: larger than --max-size {max_size} bytes ({detail}); nothing written", EXIT_FAILED)
