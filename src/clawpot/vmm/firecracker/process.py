"""The firecracker OS process: spawn, wait for its API socket, signal, reap, explain its exit.

The guest's serial console is firecracker's stdout: a FIFO next to the serial file, read by a
``ConsoleWriter`` into that file, capped and rotated (``clawpot.vmm.console`` says why a FIFO opened
read-write). Firecracker's own log goes to a separate file from the first line
(``--log-path``), keeping the serial file pure guest output. The process is spawned and watched by
``clawpot.vmm.spawn`` (as QEMU's is): an exit is noticed, reaped and explained as soon as the kernel
reports it. Explanations quote the ends of the log files through ``clawpot.vmm.logtail``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from clawpot import limits
from clawpot.vmm.base import ExitInfo, VmmStartError
from clawpot.vmm.cgroups import VmCgroup
from clawpot.vmm.console import CappedLog, ConsoleWriter, open_fifo
from clawpot.vmm.firecracker.metrics import MetricsReader
from clawpot.vmm.logtail import tail_lines
from clawpot.vmm.spawn import OnExit, VmmChild, spawn

log = logging.getLogger(__name__)

# How often the API socket is polled while firecracker starts: it appears within a few ms, so a coarse
# interval would dominate the wait.
_API_POLL_INTERVAL = 0.001
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
    # The FIFO the configuration names as firecracker's metrics_path (``metrics.MetricsReader``).
    metrics: Path | None = None

    @property
    def serial_fifo(self) -> Path:
        """What firecracker's stdout is: the FIFO the launcher copies into ``serial`` (capped)."""
        return serial_fifo(self.serial)


def serial_fifo(serial: Path) -> Path:
    """The console FIFO beside a serial file: ``serial.log`` → ``serial.fifo``."""
    return serial.with_suffix(".fifo")


class FirecrackerProcess:
    """One firecracker process. Not reusable: spawn once, then it exits once.

    Starting is two parts, so a boot recipe can swap the launch alone (a jailer, a wrapper):
    ``prepare_output()`` (refuse a leftover API socket, create the log, start reading the console FIFO)
    and ``launch(argv)`` (the process itself, through ``clawpot.vmm.spawn``). ``spawn()`` does both.
    """

    def __init__(
        self,
        binary: Path,
        vm_id: str,
        files: LaunchFiles,
        *,
        die_with_parent: bool = True,
        cwd: Path | None = None,
    ) -> None:
        self.binary = binary
        # Firecracker resolves relative paths in its configuration against its working directory: a VM's
        # own files are named relative to its directory, so a snapshot restored elsewhere opens its own.
        self.cwd = cwd
        self.vm_id = vm_id
        self.files = files
        self.die_with_parent = die_with_parent
        self.child: VmmChild | None = None
        self.console: ConsoleWriter | None = None
        self.metrics: MetricsReader | None = None
        self.spawned_at: float | None = None
        # The VM's cgroup: made by a recipe step (``clawpot.vmm.cgroups``) or by the jailer.
        self.cgroup: VmCgroup | None = None

    @property
    def pid(self) -> int | None:
        return self.child.pid if self.child else None

    @property
    def exit_info(self) -> ExitInfo | None:
        return self.child.exit_info if self.child else None

    @property
    def running(self) -> bool:
        return self.child is not None and self.child.running

    def argv(self) -> list[str]:
        # `env -C DIR` chdirs and execs firecracker: the same PID, no shell.
        chdir = ["env", "-C", str(self.cwd)] if self.cwd is not None else []
        return [*chdir, str(self.binary), "--id", self.vm_id, *self.args()]

    def args(self, seen: Callable[[Path], Path] = lambda path: path) -> list[str]:
        """Firecracker's own options (without ``--id``, which the jailer adds itself); ``seen`` turns a
        host path into the path firecracker sees (inside a jail: relative to its root)."""
        files = self.files
        return [
            "--api-sock", str(seen(files.api_socket)),
            "--log-path", str(seen(files.log)),
            "--level", "Info",
            "--show-level",
            *(["--config-file", str(seen(files.config))] if files.config is not None else []),
        ]  # fmt: skip

    async def spawn(self) -> None:
        """``prepare_output()`` then ``launch()``; on failure nothing is left reading the console."""
        self.prepare_output()
        try:
            self.launch()
        except BaseException:
            self.close_output()
            raise

    def prepare_output(self) -> None:
        """Check the API socket's place is free, create the log, start copying the console FIFO and
        reading the metrics FIFO."""
        if self.child is not None:
            raise RuntimeError("firecracker process already spawned")
        # Firecracker refuses to bind over an existing file; callers decide whether a leftover is stale.
        if self.files.api_socket.exists():
            raise VmmStartError(f"API socket {self.files.api_socket} already exists")
        try:
            self.files.log.touch()  # --log-path must name an existing file
            self.console = ConsoleWriter.from_fifo(
                self.files.serial_fifo, CappedLog(self.files.serial, fresh=True)
            )
            if self.files.metrics is not None:
                self.metrics = MetricsReader.from_fifo(self.files.metrics)
        except OSError as exc:
            self.close_output()
            raise VmmStartError(f"cannot set up firecracker's output files: {exc.strerror or exc}") from exc

    def launch(self, argv: Sequence[str] | None = None) -> None:
        """Run ``argv`` (default: ``self.argv()``; a wrapper passes its own, ending in firecracker's)
        with the console FIFO as stdout, in ``self.cgroup`` when one was made (joined before it runs;
        once firecracker is reaped it is removed, and an OOM kill is named as such). Needs
        ``prepare_output()`` first."""
        if self.child is not None:
            raise RuntimeError("firecracker process already spawned")
        argv = list(argv) if argv is not None else self.argv()
        with self.output() as (stdout, stderr):
            self.child = spawn(
                self.cgroup.wrap(argv) if self.cgroup is not None else argv,
                stdout=stdout,
                stderr=stderr,
                on_exit=self.on_exit,
                die_with_parent=self.die_with_parent,
                what="firecracker",
            )
        self.spawned_at = time.time()
        log.debug("spawned firecracker pid %s for %s", self.pid, self.vm_id)

    @contextlib.contextmanager
    def output(self) -> Iterator[tuple[int, int]]:
        """Firecracker's stdout (the console FIFO, read-write and blocking: it never sees EPIPE, and
        waits when the FIFO is full) and stderr, open for the launch; closed after (it has copies)."""
        stdout = -1
        try:
            stdout = open_fifo(self.files.serial_fifo, blocking=True)
            stderr = os.open(self.files.stderr, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            if stdout >= 0:
                os.close(stdout)
            raise VmmStartError(f"cannot set up firecracker's output files: {exc.strerror or exc}") from exc
        try:
            yield stdout, stderr
        finally:
            os.close(stdout)
            os.close(stderr)

    def watch(self, pid: int, *, then: Callable[[], None] | None = None) -> None:
        """Watch a firecracker a launcher started and handed over (the jailer): reparented to this
        process (a child subreaper), reaped and explained like one ``launch`` started; ``then`` runs
        once it is reaped (what the launcher made for it goes)."""
        if self.child is not None:
            raise RuntimeError("firecracker process already spawned")
        on_exit = self.on_exit

        def reaped(returncode: int) -> ExitInfo:
            info = on_exit(returncode)
            if then is not None:
                then()
            return info

        self.child = VmmChild.of_pid(pid, reaped, "firecracker")
        self.spawned_at = time.time()
        log.debug("watching jailed firecracker pid %s for %s", pid, self.vm_id)

    @property
    def on_exit(self) -> OnExit:
        return self.cgroup.finish(self._on_exit) if self.cgroup is not None else self._on_exit

    def close_output(self) -> None:
        """Copy what is left in the console FIFO into the file, read the last metrics, then stop
        reading both (the last metrics document stays in ``metrics.state``)."""
        if self.console is not None:
            self.console.drain()
            self.console.close()
        if self.metrics is not None:
            self.metrics.drain()
            self.metrics.close()

    def _on_exit(self, returncode: int) -> ExitInfo:
        # What the guest printed last may still be in the FIFO: into the file before anyone quotes it.
        self.close_output()
        return explain_exit(returncode, self.files.log, self.files.stderr, self.files.serial)

    async def wait_api_ready(self, deadline: float) -> None:
        """Wait until the API socket accepts connections (until ``deadline``, in ``time.monotonic()``);
        fail early if the process exits first."""
        started = time.monotonic()
        while True:
            if self.exit_info is not None:
                raise VmmStartError(f"firecracker exited before its API came up: {self.exit_info.reason}")
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
        if self.child is not None:
            self.child.send_signal(signum)

    async def wait(self) -> ExitInfo:
        """How the process ended, once it is reaped."""
        return await self._spawned().wait()

    async def wait_at_most(self, seconds: float | None) -> ExitInfo | None:
        """The exit info, or None if the process still runs after ``seconds``."""
        return await self._spawned().wait_at_most(seconds)

    async def terminate(self, term_seconds: float = 3.0) -> ExitInfo:
        """SIGTERM, then SIGKILL after ``term_seconds``; returns once reaped."""
        return await self._spawned().terminate(term_seconds)

    def _spawned(self) -> VmmChild:
        if self.child is None:
            raise RuntimeError("firecracker process was never spawned")
        return self.child


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
    for raw in reversed(tail_lines(log_path, limits.FIRECRACKER_LOG_TAIL_BYTES)):
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
    lines = tail_lines(serial_path, limits.CONSOLE_TAIL_BYTES)
    for index in range(len(lines) - 1, -1, -1):
        if "Firecracker panicked at" in lines[index]:
            message = lines[index + 1].strip() if index + 1 < len(lines) else ""
            where = lines[index][lines[index].index("Firecracker panicked") :].rstrip(":")
            return f"{where}: {message}" if message else where
    return None


def _last_line(path: Path) -> str | None:
    lines = [line for line in tail_lines(path, limits.FIRECRACKER_LOG_TAIL_BYTES) if line.strip()]
    return lines[-1].strip() if lines else None


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
