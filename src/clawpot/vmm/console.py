"""A VM's serial console on the host: a size-capped, rotated file, fed by the process that runs the VM.

The guest is untrusted and can print without end (10 MB in 20 s under TCG, far more under KVM). So the
VMM never writes the console file itself: it writes into a FIFO in the VM's directory, and a
``ConsoleWriter`` in the launcher's event loop (the server, ``clawpot-driver``, the KVM probe) copies
what arrives into a ``CappedLog``. When the file reaches ``limits.CONSOLE_LOG_MAX_BYTES`` it is renamed
to ``<name>.1`` (replacing the previous one) and a new file starts: one VM's console never takes more
than twice the cap on disk. The reader holds one buffer of ``limits.CONSOLE_READ_CHUNK`` bytes and
nothing else, and wakes at most once per ``limits.CONSOLE_READ_INTERVAL`` unless it reads full chunks,
so a guest printing one byte at a time cannot make the server spin either.

The FIFO, for both backends (checked against QEMU 7.2 and Firecracker 1.12 before choosing):

- **QEMU**: ``-chardev pipe,path=<dir>/console`` opens the FIFOs ``console.in`` and ``console.out``
  read-write and makes its end non-blocking. A full FIFO makes QEMU's 16550 model hold the byte and
  retry when there is room (the guest sees a busy UART); QEMU's main loop and QMP stay responsive
  (tests/integration/test_console_qemu.py: QMP answers in ~2 ms with nobody reading while the guest
  floods).
- **Firecracker**: the serial console is the process's stdout, and there is no other sink. Its stdout
  is ``serial.fifo`` opened read-write and blocking: a full FIFO makes the vCPU wait in the write. With
  a plain pipe instead, a reader that goes away (a server restart) turns every console byte into an
  EPIPE, and Firecracker logs one ERROR line per failed byte, which would fill ``firecracker.log``.
- Both VMMs hold their FIFO read-write, so it never loses its reader or its writer: nothing ever fails,
  and the reader never sees an end of file (after the VMM exits, ``drain`` reads what is left).

While no server runs, the FIFO fills (64 KiB) and the guest's console then waits; nothing reaches the
disk and no output is lost up to 64 KiB. A restarted server adopting the VM opens the same FIFO by its
path (``ConsoleWriter.from_fifo``), which lets the guest go on. A slow reader only slows the guest's
own serial port.

Rejected: ``-serial file:`` (no cap at all); rotating or truncating a file the VMM holds open (its
offset keeps growing, leaving a sparse file); QEMU's ``ringbuf`` chardev (memory only, readable only over
QMP, lost when QEMU exits); a unix socket chardev with ``reconnect`` (QEMU sends each console byte as its
own socket message: the kernel queues only a few hundred of them, so the reader must wake for every few
bytes. Measured with tests/integration/test_disk_bounds.py on the first version of this module, which
used one: the server spent 9.7 s of CPU in a 20 s flood and 1.4 MB got through; with the FIFO, 0.2-0.3 s
of CPU and 2-3.4 MB on the same, shared machine).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
from pathlib import Path

from clawpot import limits

log = logging.getLogger(__name__)

# Bytes ``drain`` reads at most in one call: a FIFO holds 64 KiB; the bound keeps a VMM that is still
# writing from holding the loop.
_DRAIN_LIMIT = 4 * 1024 * 1024


class CappedLog:
    """Appends to ``path``; rotates to ``path.1`` (``.2`` ... up to ``keep``) before it would exceed ``cap``.

    Not thread-safe; one writer per file. ``fresh`` starts from nothing (a VMM just started: an old
    console and its predecessors are removed); otherwise it appends to what is there (a server that adopts
    a VM continues the file the previous one wrote), and a file already over the cap is rotated at the
    first write.
    """

    def __init__(
        self,
        path: Path,
        cap: int = limits.CONSOLE_LOG_MAX_BYTES,
        *,
        keep: int = limits.CONSOLE_LOG_KEEP,
        fresh: bool = False,
    ) -> None:
        if cap < 1 or keep < 0:
            raise ValueError("cap must be >= 1 and keep >= 0")
        self.path = path
        self.cap = cap
        self.keep = keep
        self._fd: int | None = None
        self._size = 0
        if fresh:
            self.remove_files(path, keep)
        self._open()

    @property
    def rotated(self) -> tuple[Path, ...]:
        """The predecessor files, newest first (existing or not)."""
        return tuple(self.path.with_name(f"{self.path.name}.{n}") for n in range(1, self.keep + 1))

    def _open(self) -> None:
        # O_NOFOLLOW: the VM directory is ours, but never write through a link someone put there.
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW
        self._fd = os.open(self.path, flags, 0o600)
        self._size = os.fstat(self._fd).st_size

    def write(self, data: bytes | memoryview) -> None:
        """Append ``data``, rotating as often as needed; the current file never exceeds ``cap``."""
        view = memoryview(data)
        while view:
            if self._fd is None:
                raise ValueError("write to a closed CappedLog")
            room = self.cap - self._size
            if room <= 0:
                self.rotate()
                continue
            written = os.write(self._fd, view[:room])
            self._size += written
            view = view[written:]

    def rotate(self) -> None:
        """Current file → ``.1`` (→ ``.2`` ...), oldest dropped; a new, empty current file."""
        self.close()
        if self.keep == 0:
            self.path.unlink(missing_ok=True)
        else:
            names = [self.path, *self.rotated]
            for older, newer in zip(reversed(names[1:]), reversed(names[:-1]), strict=True):
                with contextlib.suppress(FileNotFoundError):
                    os.replace(newer, older)
        self._open()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def remove(self) -> None:
        """Close and delete the current file and its predecessors."""
        self.close()
        self.remove_files(self.path, self.keep)

    @staticmethod
    def remove_files(path: Path, keep: int = limits.CONSOLE_LOG_KEEP) -> None:
        """Delete a console file and its rotated predecessors (no writer needed)."""
        for name in (path.name, *(f"{path.name}.{n}" for n in range(1, keep + 1))):
            path.with_name(name).unlink(missing_ok=True)


def make_fifo(path: Path) -> None:
    """Create the FIFO a VMM writes its console into (0600); an existing FIFO is reused (an adopted
    VM's), anything else at ``path`` is refused."""
    try:
        os.mkfifo(path, 0o600)
    except FileExistsError:
        if not stat.S_ISFIFO(os.lstat(path).st_mode):
            raise OSError(f"{path} exists and is not a FIFO; refusing to use it") from None


def open_fifo(path: Path, *, blocking: bool) -> int:
    """Open a console FIFO read-write: the opener is then one of its readers and one of its writers, so
    the FIFO never reports an end of file to a reader nor EPIPE to a writer, and open never waits."""
    flags = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW | (0 if blocking else os.O_NONBLOCK)
    fd = os.open(path, flags)
    if not stat.S_ISFIFO(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(f"{path} is not a FIFO")
    return fd


class ConsoleWriter:
    """Copies a VMM's console FIFO into a ``CappedLog`` from the running event loop.

    Reads are non-blocking and at most ``chunk`` bytes each; the only buffer is that one read. After a
    read that emptied the FIFO the writer sleeps ``interval`` seconds before it listens again, so output
    arriving byte by byte is read in batches. A write error (disk full) drops the console output,
    logged once: the console is never worth stopping a VM, or the server, for.
    """

    def __init__(
        self,
        fd: int,
        console: CappedLog,
        *,
        chunk: int = limits.CONSOLE_READ_CHUNK,
        interval: float = limits.CONSOLE_READ_INTERVAL,
    ) -> None:
        self.log = console
        self.chunk = chunk
        self.interval = interval
        self.bytes_read = 0
        self._loop = asyncio.get_running_loop()
        self._fd: int | None = fd
        self._resume: asyncio.TimerHandle | None = None
        self._write_failed = False
        os.set_blocking(fd, False)
        self._loop.add_reader(fd, self._on_readable)

    @classmethod
    def from_fifo(
        cls,
        path: Path,
        console: CappedLog,
        *,
        chunk: int = limits.CONSOLE_READ_CHUNK,
        interval: float = limits.CONSOLE_READ_INTERVAL,
    ) -> ConsoleWriter:
        """Read the console FIFO at ``path`` (made if missing): for a VMM about to start, or one adopted."""
        try:
            make_fifo(path)
            fd = open_fifo(path, blocking=False)
        except BaseException:
            console.close()
            raise
        return cls(fd, console, chunk=chunk, interval=interval)

    # -- reading -----------------------------------------------------------------------------------

    def _on_readable(self) -> None:
        full = self._read_once()
        if not full and self._fd is not None and self.interval > 0:
            # Emptied it: let the next output gather for a while instead of waking for every byte.
            self._loop.remove_reader(self._fd)
            self._resume = self._loop.call_later(self.interval, self._listen_again)

    def _listen_again(self) -> None:
        self._resume = None
        if self._fd is not None:
            self._loop.add_reader(self._fd, self._on_readable)

    def _read_once(self) -> bool:
        """One bounded read; True when it filled the buffer (there may be more right away)."""
        if self._fd is None:
            return False
        try:
            data = os.read(self._fd, self.chunk)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            log.warning("console %s: read failed (%s); no more console output", self.log.path, exc)
            self._stop_reading()
            return False
        if not data:  # only if someone replaced our FIFO: nothing more will come from this fd
            self._stop_reading()
            return False
        self.bytes_read += len(data)
        self._store(data)
        return len(data) == self.chunk

    def _store(self, data: bytes) -> None:
        try:
            self.log.write(data)
        except (OSError, ValueError) as exc:
            if not self._write_failed:
                log.warning("console %s: cannot write (%s); dropping console output", self.log.path, exc)
                self._write_failed = True

    def drain(self, limit: int = _DRAIN_LIMIT) -> None:
        """Read what is buffered right now, without waiting: call after the VMM exited, so the file
        holds its last words before anyone quotes them."""
        done = 0
        while done < limit and self._read_once():
            done += self.chunk

    def _stop_reading(self) -> None:
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        if self._fd is not None:
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = None

    def close(self) -> None:
        """Stop reading; close the FIFO and the file (the FIFO stays for whoever adopts the VMM)."""
        self._stop_reading()
        self.log.close()
