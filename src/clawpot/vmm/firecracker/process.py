"""The firecracker OS process: spawn, wait for its API socket, signal, reap, explain its exit.

The guest's serial console is firecracker's stdout: a FIFO next to the serial file, read by a
``ConsoleWriter`` into that file, capped and rotated (``clawpot.vmm.console`` says why a FIFO opened
read-write). Firecracker's own log goes to a separate file from the first line
(``--log-path``), keeping the serial file pure guest output. A reaper task waits on the child from the
moment it is spawned, so an exit is noticed (and the zombie reaped) as soon as the kernel reports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from clawpot.vmm.base import ExitInfo, VmmStartError
from clawpot.vmm.console import CappedLog, ConsoleWriter, open_fifo
from clawpot.vmm.spawn import die_with_parent

log = logging.getLogger(__name__)

# How often the API socket is polled while firecracker starts: it appears within a few ms, so a coarse
# interval would dominate the wait.
_API_POLL_INTERVAL = 0.001
# The tail of the log read when explaining an exit; errors are always near the end.
_LOG_TAIL_BYTES = 64 * 1024
# Error lines Firecracker prints on every failing exit; they only repeat the exit code. Not every
# "RunWith(out)ApiError error: ..." line: with --config-file, "RunWithApiError error: Failed to build
# MicroVM from Json: <reason>" is the only line that says why the configuration was refused.
_GENERIC_ERRORS = re.compile(
    r"Firecracker exiting with error|MicroVM ?[Ss]topped with(out)? an error|"
    r"Received Error\. Status code: 400"
)
_LOG_PREFIX = re.compile(r"^\S+ \[(?P<origin>[^\]]*?)(?::(?P<level>ERROR|WARN|INFO|DEBUG|TRACE))?\] ")


@dataclass(frozen=True)
class LaunchFiles:
    """Where one firecracker process keeps its sockets and output."""

    api_socket: Path
    log: Path
    serial: Path
    stderr: Path
    # A whole-VM configuration (``--config-file``): firecracker boots it at once, API socket still on.
    config: Path | None = None

    @property
    def serial_fifo(self) -> Path:
        """What firecracker's stdout is: the FIFO the launcher copies into ``serial`` (capped)."""
        return serial_fifo(self.serial)


def serial_fifo(serial: Path) -> Path:
    """The console FIFO beside a serial file: ``serial.log`` → ``serial.fifo``."""
    return serial.with_suffix(".fifo")


class FirecrackerProcess:
    """One firecracker process. Not reusable: spawn once, then it exits once."""

    def __init__(self, binary: Path, vm_id: str, files: LaunchFiles, *, die_with_parent: bool = True) -> None:
        self.binary = binary
        self.vm_id = vm_id
        self.files = files
        self.die_with_parent = die_with_parent
        self._proc: subprocess.Popen[bytes] | None = None
        self._reaper: asyncio.Task[ExitInfo] | None = None
        self._exit_info: ExitInfo | None = None
        self.console: ConsoleWriter | None = None
        self.spawned_at: float | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def exit_info(self) -> ExitInfo | None:
        return self._exit_info

    @property
    def running(self) -> bool:
        return self._proc is not None and self._exit_info is None

    def argv(self) -> list[str]:
        return [
            str(self.binary),
            "--api-sock", str(self.files.api_socket),
            "--id", self.vm_id,
            "--log-path", str(self.files.log),
            "--level", "Info",
            "--show-level",
            *(["--config-file", str(self.files.config)] if self.files.config is not None else []),
        ]  # fmt: skip

    async def spawn(self) -> None:
        if self._proc is not None:
            raise RuntimeError("firecracker process already spawned")
        # Firecracker refuses to bind over an existing file; callers decide whether a leftover is stale.
        if self.files.api_socket.exists():
            raise VmmStartError(f"API socket {self.files.api_socket} already exists")
        stdout = -1
        try:
            serial = CappedLog(self.files.serial, fresh=True)
            self.console = ConsoleWriter.from_fifo(self.files.serial_fifo, serial)
            # Read-write and blocking: firecracker never sees EPIPE, and waits when the FIFO is full.
            stdout = open_fifo(self.files.serial_fifo, blocking=True)
            stderr = self._open_stderr()
        except OSError as exc:
            if stdout >= 0:
                os.close(stdout)
            self._close_console()
            raise VmmStartError(f"cannot set up firecracker's output files: {exc.strerror or exc}") from exc
        try:
            # Plain Popen, reaped through a pidfd (_wait_exit): asyncio's subprocess machinery
            # starts a waiter thread per child, which was ~1 ms of every VM start.
            self._proc = subprocess.Popen(  # noqa: ASYNC220 - returns once the child has exec'd
                self.argv(),
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                # Own session: a Ctrl+C on the terminal reaches us, and we stop the VM in order.
                start_new_session=True,
                preexec_fn=die_with_parent() if self.die_with_parent else None,
            )
        except OSError as exc:
            self._close_console()
            raise VmmStartError(f"cannot run {self.binary}: {exc.strerror or exc}") from exc
        finally:
            os.close(stdout)  # firecracker has its copies
            stderr.close()
        self.spawned_at = time.time()
        self._reaper = asyncio.create_task(self._reap(self._proc), name=f"reap firecracker {self.pid}")
        log.debug("spawned firecracker pid %s for %s", self.pid, self.vm_id)

    def _open_stderr(self) -> BinaryIO:
        # --log-path must name an existing file.
        self.files.log.touch()
        return open(self.files.stderr, "wb")  # closed once firecracker has its copy

    def _close_console(self) -> None:
        if self.console is not None:
            self.console.drain()
            self.console.close()

    async def wait_api_ready(self, deadline: float) -> None:
        """Wait until the API socket accepts connections (until ``deadline``, in ``time.monotonic()``);
        fail early if the process exits first."""
        started = time.monotonic()
        while True:
            if self._exit_info is not None:
                raise VmmStartError(f"firecracker exited before its API came up: {self._exit_info.reason}")
            if self.files.api_socket.exists():
                with contextlib.suppress(OSError):
                    _reader, writer = await asyncio.open_unix_connection(str(self.files.api_socket))
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
                    return
            if time.monotonic() >= deadline:
                raise VmmStartError(
                    f"firecracker API socket {self.files.api_socket} not ready after "
                    f"{time.monotonic() - started:.1f}s"
                )
            await asyncio.sleep(_API_POLL_INTERVAL)

    def send_signal(self, signum: int) -> None:
        if self._proc is not None and self._exit_info is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(signum)

    async def wait(self) -> ExitInfo:
        """How the process ended, once it is reaped."""
        if self._reaper is None:
            raise RuntimeError("firecracker process was never spawned")
        # Shielded: a cancelled waiter must not cancel the reaper that other waiters share.
        return await asyncio.shield(self._reaper)

    async def wait_at_most(self, seconds: float | None) -> ExitInfo | None:
        """The exit info, or None if the process still runs after ``seconds``."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                return await self.wait()
        return None

    async def terminate(self, term_seconds: float = 3.0) -> ExitInfo:
        """SIGTERM, then SIGKILL after ``term_seconds``; returns once reaped."""
        if self._exit_info is None and term_seconds > 0:
            log.debug("sending SIGTERM to firecracker pid %s", self.pid)
            self.send_signal(signal.SIGTERM)
            await self.wait_at_most(term_seconds)
        if self._exit_info is None:
            log.debug("sending SIGKILL to firecracker pid %s", self.pid)
            self.send_signal(signal.SIGKILL)
        return await self.wait()

    async def _reap(self, proc: subprocess.Popen[bytes]) -> ExitInfo:
        returncode = await _wait_exit(proc)
        # What the guest printed last may still be in the FIFO: into the file before anyone quotes it.
        self._close_console()
        info = explain_exit(returncode, self.files.log, self.files.stderr, self.files.serial)
        self._exit_info = info
        log.debug("firecracker pid %s exited: %s", proc.pid, info.reason)
        return info


async def _wait_exit(proc: subprocess.Popen[bytes]) -> int:
    """The child's exit code once it exits, without a thread: its pidfd turns readable then."""
    try:
        pidfd = os.pidfd_open(proc.pid)
    except OSError:  # kernels before 5.3
        return await asyncio.to_thread(proc.wait)
    loop = asyncio.get_running_loop()
    exited: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not exited.done():
            exited.set_result(None)

    loop.add_reader(pidfd, readable)
    try:
        await exited
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)
    return proc.wait()  # exited: reaps at once


def explain_exit(
    returncode: int, log_path: Path, stderr_path: Path, serial_path: Path | None = None
) -> ExitInfo:
    """One line for a user: how firecracker ended and the last error it reported."""
    if returncode < 0:
        signum = -returncode
        how = f"firecracker killed by {_signal_name(signum)}"
        info_signal: int | None = signum
        code: int | None = None
    else:
        how = f"firecracker exited with code {returncode}"
        info_signal, code = None, returncode
    detail = (
        last_error_line(log_path)
        or _last_line(stderr_path)
        or (_panic_message(serial_path) if serial_path is not None else None)
    )
    if detail is None and returncode == 0:
        # Firecracker exits 0 when the guest reboots (reboot=k), which panic=1 turns a kernel panic into.
        detail = "the guest rebooted, powered off or panicked"
    return ExitInfo(code, info_signal, f"{how}: {detail}" if detail else how)


def last_error_line(log_path: Path) -> str | None:
    """The last ERROR line of a firecracker log that says more than "exiting with error"."""
    fallback: str | None = None
    for raw in reversed(_tail_lines(log_path)):
        match = _LOG_PREFIX.match(raw)
        if not match or match["level"] != "ERROR":
            continue
        line = f"[{match['origin']}] {raw[match.end() :]}"
        if not _GENERIC_ERRORS.search(raw):
            return line
        fallback = fallback or line
    return fallback


def _panic_message(serial_path: Path) -> str | None:
    """A panic before the logger is set up goes to stdout, which is the serial file."""
    lines = _tail_lines(serial_path)
    for index in range(len(lines) - 1, -1, -1):
        if "Firecracker panicked at" in lines[index]:
            message = lines[index + 1].strip() if index + 1 < len(lines) else ""
            where = lines[index][lines[index].index("Firecracker panicked") :].rstrip(":")
            return f"{where}: {message}" if message else where
    return None


def _last_line(path: Path) -> str | None:
    lines = [line for line in _tail_lines(path) if line.strip()]
    return lines[-1].strip() if lines else None


def _tail_lines(path: Path) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - _LOG_TAIL_BYTES))
            return f.read().decode(errors="replace").splitlines()
    except OSError:
        return []


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def reattach_console(serial: Path) -> ConsoleWriter | None:
    """The console of a firecracker adopted after a server restart: its FIFO, read again (None when it
    has none: started by a Clawpot that wrote the console to a file)."""
    fifo = serial_fifo(serial)
    if not fifo.exists():
        return None
    return ConsoleWriter.from_fifo(fifo, CappedLog(serial))
