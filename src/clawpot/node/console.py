"""A VM's serial console as its users read it: the last lines, then (``follow``) what comes next.

The console is written by the VMM's ``ConsoleWriter`` into a capped file rotated with one predecessor
(``clawpot.vmm.console``): ``console.log`` (QEMU) or ``serial.log`` (Firecracker), and ``<name>.1``.
This module only reads those files, so it serves the gRPC ``StreamLogs`` call and any other front
(the E2B-style REST API) alike, without gRPC.

Bounded, since the console is the guest's (untrusted) text and a reader is a client we do not
control: the tail is found by scanning back in blocks (never the whole file in memory), at most
``limits.LOGS_TAIL_MAX_LINES`` lines, and handed out in chunks of at most ``limits.LOGS_CHUNK_BYTES``.
Following polls the file every ``limits.LOGS_FOLLOW_INTERVAL`` (one ``read`` and one ``stat``): a
rotation shows as the path naming another file, and the reader finishes the old file (its open
descriptor still reads it) before it opens the new one. Output is lost only if the guest prints two
whole files (2 MiB) within one poll interval, which the rotation would have dropped anyway.

The console outlives the VMM: when a VM goes to Error its console files are kept in its directory
until the VM is deleted (``keep_only_console``), so ``clawpot logs`` shows why it died.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from clawpot import limits
from clawpot.vmm.firecracker.handle import SERIAL_NAME
from clawpot.vmm.qemu.cmdline import QemuFiles
from clawpot.vmm.spec import BackendKind

# Where a crashed VM's console waits (``.<id>.console-kept`` beside its directory) while its VMM's
# cleanup removes the VM's directory. A server restart finds any left there as orphans and removes them.
_KEPT_SUFFIX = ".console-kept"
_SCAN_BLOCK = 64 * 1024


def console_log(vm_dir: Path, backend: BackendKind) -> Path:
    """The current console file of a VM of ``backend`` in ``vm_dir`` (it may not exist yet)."""
    if backend is BackendKind.FIRECRACKER:
        return vm_dir / SERIAL_NAME
    return QemuFiles.in_dir(vm_dir).serial_log


def _rotated(path: Path) -> Path:
    return path.with_name(f"{path.name}.1")


# -- keeping a dead VM's console ----------------------------------------------------------------------


def _kept_dir(path: Path) -> Path:
    """Beside the VM directory, not in it: the VM's own cleanup removes its whole directory."""
    vm_dir = path.parent
    return vm_dir.with_name(f".{vm_dir.name}{_KEPT_SUFFIX}")


def set_aside(path: Path) -> None:
    """Hard-link the console files to a place beside the VM directory, so the VMM's cleanup (which
    removes its console, and the directory) does not take them. Call before stopping a VM whose
    console is to be kept; ``keep_only_console`` puts them back."""
    kept = _kept_dir(path)
    with contextlib.suppress(FileExistsError):
        kept.mkdir(mode=0o700)
    for source in (_rotated(path), path):
        with contextlib.suppress(FileNotFoundError, FileExistsError):
            os.link(source, kept / source.name, follow_symlinks=False)


def keep_only_console(path: Path) -> None:
    """Leave in the VM directory only its console files: what a VM in Error keeps until it is deleted
    (no directory at all when there is no console). Takes back what ``set_aside`` put aside."""
    vm_dir = path.parent
    if vm_dir.is_dir():
        set_aside(path)  # files still in place (a VM found dead at start): put them aside too
        shutil.rmtree(vm_dir, ignore_errors=True)
    kept = _kept_dir(path)
    if not kept.is_dir():
        return
    entries = list(kept.iterdir())
    if entries:
        vm_dir.mkdir(mode=0o700, exist_ok=True)
    for entry in entries:
        os.replace(entry, vm_dir / entry.name)
    kept.rmdir()


# -- reading ------------------------------------------------------------------------------------------


def _open(path: Path) -> int | None:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _tail_start(fd: int, size: int, lines: int) -> tuple[int, int]:
    """Scan ``fd`` back from ``size``: (offset where the last ``lines`` lines start, lines still
    wanted from the file before it). A last line without its newline counts as a line."""
    if lines <= 0:
        return size, 0
    wanted = lines + 1  # the newline that ends the line before the ones we want
    end = size
    if size > 0 and os.pread(fd, 1, size - 1) != b"\n":
        wanted -= 1  # the unfinished last line is one of them
    while end > 0:
        start = max(0, end - _SCAN_BLOCK)
        block = os.pread(fd, end - start, start)
        index = len(block)
        while wanted > 0:
            index = block.rfind(b"\n", 0, index)
            if index < 0:
                break
            wanted -= 1
            if wanted == 0:
                return start + index + 1, 0
        end = start
    return 0, wanted


def _open_kept(path: Path) -> int | None:
    """``path``, or its copy set aside while a crashed VM's directory is being cleaned (milliseconds)."""
    fd = _open(path)
    return fd if fd is not None else _open(_kept_dir(path) / path.name)


class _Cursor:
    """An open console file and how far it has been read."""

    def __init__(self, fd: int, offset: int = 0) -> None:
        self.fd = fd
        self.offset = offset

    def next_chunk(self, chunk: int) -> bytes:
        """The next at most ``chunk`` bytes, b"" at the end (for now). A file never grows past the cap
        (it is rotated instead), so reading to the end always ends."""
        data = os.pread(self.fd, chunk, self.offset)
        self.offset += len(data)
        return data

    def close(self) -> None:
        os.close(self.fd)


async def read(
    path: Path,
    *,
    tail_lines: int | None = None,
    follow: bool = False,
    more_may_come: Callable[[], bool] = lambda: False,
    stop: asyncio.Event | None = None,
    chunk: int = limits.LOGS_CHUNK_BYTES,
    interval: float = limits.LOGS_FOLLOW_INTERVAL,
) -> AsyncIterator[bytes]:
    """The console at ``path`` (with its predecessor), oldest first: all that is kept, or its last
    ``tail_lines`` lines (capped at ``limits.LOGS_TAIL_MAX_LINES``). With ``follow``, then what is
    written next, across rotations, until ``more_may_come()`` says the VM can print no more (it is in
    Error, being deleted or gone: what it printed last is still sent) or ``stop`` is set."""
    if tail_lines is not None:
        tail_lines = min(max(tail_lines, 0), limits.LOGS_TAIL_MAX_LINES)
    current_fd, previous_fd = _open_kept(path), _open_kept(_rotated(path))
    current = _Cursor(current_fd) if current_fd is not None else None
    previous = _Cursor(previous_fd) if previous_fd is not None else None
    try:
        # The backlog: the predecessor (when the tail reaches into it), then the current file.
        still_wanted = tail_lines
        if current is not None and tail_lines is not None:
            size = os.fstat(current.fd).st_size
            current.offset, still_wanted = _tail_start(current.fd, size, tail_lines)
        if previous is not None:
            if still_wanted is not None:
                size = os.fstat(previous.fd).st_size
                previous.offset = _tail_start(previous.fd, size, still_wanted)[0] if still_wanted else size
            while data := previous.next_chunk(chunk):
                yield data
            previous.close()
            previous = None
        if current is not None:
            while data := current.next_chunk(chunk):
                yield data
        if not follow:
            return
        # Following: poll the open file; when the path names another file, finish this one first.
        while True:
            last_round = not more_may_come() or (stop is not None and stop.is_set())
            if current is not None:
                while data := current.next_chunk(chunk):
                    yield data
            if _replaced(path, current):
                if current is not None:
                    current.close()
                fd = _open(path)
                current = _Cursor(fd) if fd is not None else None
                continue  # read the new file at once: it may have filled already
            if last_round:
                return
            await _sleep(interval, stop)
    finally:
        for cursor in (current, previous):
            if cursor is not None:
                cursor.close()


def _replaced(path: Path, cursor: _Cursor | None) -> bool:
    """Whether ``path`` now names another file than the open one (rotated, or made since)."""
    try:
        named = os.stat(path, follow_symlinks=False)
    except (FileNotFoundError, NotADirectoryError):
        return False  # gone (deleted, or being kept after a crash): keep reading what we hold
    if cursor is None:
        return True
    held = os.fstat(cursor.fd)
    return (named.st_ino, named.st_dev) != (held.st_ino, held.st_dev)


async def _sleep(interval: float, stop: asyncio.Event | None) -> None:
    if stop is None:
        await asyncio.sleep(interval)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), interval)
