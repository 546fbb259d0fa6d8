"""A VM's serial console on the host: a size-capped, rotated file, fed by the process that runs the VM.

The guest is untrusted and can print without end (10 MB in 20 s under TCG, far more under KVM). So the
VMM never writes the console file itself: it writes into a socket or a pipe, and ``ConsoleWriter``
(running in the launcher's event loop: the server, ``clawpot-driver``, the KVM probe) copies what
arrives into a ``CappedLog``. When the file reaches ``limits.CONSOLE_LOG_MAX_BYTES`` it is renamed to
``<name>.1`` (replacing the previous one) and a new file starts: one VM's console never takes more
than twice the cap on disk. The reader holds one buffer of ``limits.CONSOLE_READ_CHUNK`` bytes and
nothing else; a slow reader only slows the guest's own serial port.

How each backend feeds it (checked against QEMU 7.2 and Firecracker 1.12 before choosing):

- **QEMU**: ``-serial chardev:console`` on ``-chardev socket,...,server=off,reconnect=1``: QEMU is the
  *client* of a unix socket the launcher listens on (``ConsoleWriter.listen``), created before QEMU
  starts. QEMU starts paused (``-S``) and the guest runs only once the console is connected, so no boot
  output is lost. While nobody listens (the server is down), QEMU's socket chardev fails the write
  and its 16550 model drops the byte: the guest never blocks and nothing reaches the disk. QEMU
  retries the connection every second, so the next server's listener gets the console of an adopted
  VM back by itself. A slow reader fills the socket buffer; QEMU then waits for it to drain before it
  accepts the next byte from the guest (the guest's UART looks busy), never buffering more itself.
- **Firecracker** (1.12): the serial console is the process's stdout; there is no other sink. Stdout
  is a pipe whose read end the launcher reads (``ConsoleWriter.from_fd``). Firecracker is also handed a
  second read end that it never reads: the pipe then never loses its last reader, because with no
  reader every console byte fails with EPIPE and Firecracker logs one ERROR line per failed byte,
  which would fill ``firecracker.log`` instead. So when the server is down, a Firecracker guest that
  prints more than the pipe holds (64 KiB) waits in its serial write until a reader comes back;
  nothing reaches the disk. The next server adopts the VM and reopens the same pipe through
  ``/proc/PID/fd/1`` (``ConsoleWriter.from_process_stdout``), which wakes the guest; what the guest
  printed meanwhile (up to 64 KiB) is kept. (The jailer closes inherited descriptors: when it comes,
  it must pass this one through, or the EPIPE case returns.)

Rejected: ``-serial file:`` (no cap at all); rotating or truncating a file the VMM holds open (the
VMM's offset keeps growing, leaving a sparse file that ``cat`` still reads as its whole size); QEMU's
``ringbuf`` chardev (memory only, readable only over QMP, lost when QEMU exits).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
from pathlib import Path

from clawpot import limits

log = logging.getLogger(__name__)

# Bytes ``drain`` reads at most in one call: what a dead VMM left in a pipe or socket buffer is far
# less; the bound keeps a still-writing VMM from holding the loop.
_DRAIN_LIMIT = 4 * 1024 * 1024


class CappedLog:
    """Appends to ``path``; rotates to ``path.1`` (``.2`` ... up to ``keep``) before it would exceed ``cap``.

    Not thread-safe; one writer per file. Opening appends to what is there (a server that adopts a VM
    continues the file the previous one wrote); a file already over the cap is rotated at the first write.
    """

    def __init__(
        self, path: Path, cap: int = limits.CONSOLE_LOG_MAX_BYTES, *, keep: int = limits.CONSOLE_LOG_KEEP
    ) -> None:
        if cap < 1 or keep < 0:
            raise ValueError("cap must be >= 1 and keep >= 0")
        self.path = path
        self.cap = cap
        self.keep = keep
        self._fd: int | None = None
        self._size = 0
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


class ConsoleWriter:
    """Copies a VMM's console stream into a ``CappedLog`` from the running event loop.

    The source is a listening unix socket (QEMU connects, and reconnects, to it) or a pipe's read end
    (Firecracker's stdout). Reads are non-blocking and at most ``chunk`` bytes per wake-up; the only
    buffer is that one read. A write error (disk full) drops the console output, logged once: the
    console is never worth stopping a VM, or the server, for.
    """

    def __init__(self, console: CappedLog, *, chunk: int = limits.CONSOLE_READ_CHUNK) -> None:
        self.log = console
        self.chunk = chunk
        self._loop = asyncio.get_running_loop()
        self._listener: socket.socket | None = None
        self._socket_path: Path | None = None
        self._source: int | None = None  # fd being read (pipe read end or the accepted connection)
        self._connected = asyncio.Event()
        self._write_failed = False
        self.bytes_read = 0

    # -- sources -----------------------------------------------------------------------------------

    @classmethod
    def listen(cls, socket_path: Path, console: CappedLog, **kwargs: int) -> ConsoleWriter:
        """Listen on ``socket_path`` (replacing a stale socket file, e.g. a dead server's) for the VMM."""
        writer = cls(console, **kwargs)
        _remove_stale_socket(socket_path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            listener.bind(str(socket_path))
            os.chmod(socket_path, 0o600)
            listener.listen(1)
            listener.setblocking(False)
        except BaseException:
            listener.close()
            console.close()
            raise
        writer._listener = listener
        writer._socket_path = socket_path
        writer._loop.add_reader(listener.fileno(), writer._accept)
        return writer

    @classmethod
    def from_fd(cls, fd: int, console: CappedLog, **kwargs: int) -> ConsoleWriter:
        """Read ``fd`` (a pipe's read end; the writer owns and closes it)."""
        writer = cls(console, **kwargs)
        writer._attach(fd)
        return writer

    @classmethod
    def from_process_stdout(cls, pid: int, console: CappedLog, **kwargs: int) -> ConsoleWriter | None:
        """Reopen the pipe that is process ``pid``'s stdout (a VMM adopted after a server restart).

        Opening ``/proc/PID/fd/1`` read-only gives a new read end of that same pipe. None (and the log
        closed) when stdout is not a pipe, e.g. a VMM started by an older Clawpot that wrote a file.
        """
        link = f"/proc/{pid}/fd/1"
        try:
            if not os.readlink(link).startswith("pipe:"):
                console.close()
                return None
            fd = os.open(link, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            console.close()
            return None
        return cls.from_fd(fd, console, **kwargs)

    # -- state -------------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._source is not None

    async def wait_connected(self) -> None:
        """Until a source is attached (for a listener: the VMM has connected)."""
        await self._connected.wait()

    # -- reading -----------------------------------------------------------------------------------

    def _attach(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self._source = fd
        self._connected.set()
        self._loop.add_reader(fd, self._on_readable)

    def _detach_source(self) -> None:
        if self._source is not None:
            self._loop.remove_reader(self._source)
            os.close(self._source)
            self._source = None
            self._connected.clear()

    def _accept(self) -> None:
        assert self._listener is not None
        try:
            conn, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.warning("console %s: accept failed: %s", self._socket_path, exc)
            return
        # One VMM, one connection: a new one means QEMU reconnected, so the old one is dead.
        self._detach_source()
        self._attach(conn.detach())

    def _on_readable(self) -> None:
        self._read_once()

    def _read_once(self) -> bool:
        """One bounded read; False when nothing more is there now (or the source ended)."""
        if self._source is None:
            return False
        try:
            data = os.read(self._source, self.chunk)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:  # ECONNRESET and the like: the VMM went away
            log.debug("console %s: read failed: %s", self.log.path, exc)
            data = b""
        if not data:
            # EOF: the VMM exited (pipe), or closed the connection (QEMU reconnects to the listener).
            self._detach_source()
            return False
        self.bytes_read += len(data)
        self._store(data)
        return True

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
        if self._listener is not None and self._source is None:
            self._accept()  # a VMM that connected, wrote and died before the loop saw it
        done = 0
        while done < limit and self._read_once():
            done += self.chunk

    def close(self, *, unlink_socket: bool = True) -> None:
        """Stop reading and close everything. ``unlink_socket=False`` leaves the listening socket's
        file for the next server (a server leaving its VMs running); it removes it as stale."""
        self._detach_source()
        if self._listener is not None:
            self._loop.remove_reader(self._listener.fileno())
            self._listener.close()
            self._listener = None
            if unlink_socket and self._socket_path is not None:
                self._socket_path.unlink(missing_ok=True)
        self.log.close()


def _remove_stale_socket(path: Path) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(f"{path} exists and is not a socket; refusing to replace it")
    path.unlink()


def vmm_stdout_pipe() -> tuple[int, int, int]:
    """A pipe for a VMM's stdout: (read end for the writer, write end for the VMM, read end for the VMM).

    The VMM inherits the write end as stdout and keeps the second read end open (``pass_fds``) so the
    pipe always has a reader (see the module docstring). The caller closes both VMM ends after the
    spawn. Writes stay blocking (the VMM waits rather than fails); the writer's end is non-blocking.
    """
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    keeper = os.dup(read_end)  # shares the read end's description; inherited only via pass_fds
    return read_end, write_end, keeper
