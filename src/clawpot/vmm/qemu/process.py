"""One QEMU process: spawn, wait until the guest CPU runs, notice the exit at once, reap, clean up.

The process is watched through a pidfd registered with the event loop: readable the moment QEMU
exits, whatever the reason (guest poweroff, crash, ``kill -9`` from outside), so ``wait()`` resolves
within one loop iteration. Holding the pidfd until the exit is reaped also means signals go to our
QEMU and never to a recycled PID.

The serial console: before QEMU is spawned the VM's console FIFOs are made and a ``ConsoleWriter``
reads ``console.out``, keeping ``console.log`` capped and rotated for the process's whole life
(``clawpot.vmm.console``).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from clawpot.guest.endpoints import AgentEndpoint, SerialSocketEndpoint, VsockEndpoint
from clawpot.vmm.base import ExitInfo, VmmConfigError, VmmProcess, VmmStartError
from clawpot.vmm.console import CappedLog, ConsoleWriter, make_fifo
from clawpot.vmm.qemu.cmdline import QEMU_BINARY, Accel, QemuFiles, build_command, validate
from clawpot.vmm.qemu.qmp import QmpControl, QmpError
from clawpot.vmm.spawn import die_with_parent
from clawpot.vmm.spec import BackendKind, VmSpec

_POLL = 0.01
# After QMP `quit` or SIGTERM, how long QEMU gets before the next, harder step.
_STEP_TIMEOUT = 2.0

AccelChooser = Callable[[VmSpec], Awaitable[Accel]]


class QemuProcess(VmmProcess):
    kind = BackendKind.QEMU

    def __init__(
        self,
        spec: VmSpec,
        vm_dir: Path,
        *,
        accel: Accel | AccelChooser,
        binary: str = QEMU_BINARY,
        vsock_cid: int | None = None,
        qmp_socket: Path | None = None,
        start_timeout: float = 10.0,
        die_with_parent: bool = True,
    ) -> None:
        self.spec = spec
        self.vm_dir = vm_dir
        # Chosen at start() when given as a chooser (it may have to probe, which is async).
        self.accel: Accel | None = accel if isinstance(accel, Accel) else None
        self._choose_accel = None if isinstance(accel, Accel) else accel
        self.binary = binary
        self.vsock_cid = vsock_cid
        self.start_timeout = start_timeout
        self.die_with_parent = die_with_parent
        self.files = QemuFiles.in_dir(vm_dir, qmp_socket=qmp_socket)
        self.qmp = QmpControl(self.files.qmp_socket)
        self._popen: subprocess.Popen[bytes] | None = None
        self.console: ConsoleWriter | None = None
        self._pidfd: int | None = None
        self._exited: asyncio.Future[ExitInfo] | None = None
        self._exit_info: ExitInfo | None = None
        # A clean exit after our QMP quit is not the guest powering off: say which it was.
        self._quit_sent = False

    @property
    def command(self) -> list[str]:
        if self.accel is None:
            raise VmmStartError("the accelerator is chosen when the VM starts")
        name = "clawpot-" + re.sub(r"[^A-Za-z0-9_.-]", "_", self.vm_dir.name)
        return build_command(
            self.spec, self.files, self.accel, binary=self.binary, vsock_cid=self.vsock_cid, name=name
        )

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen is not None else None

    @property
    def control_socket(self) -> Path:
        """The QMP socket (recorded in the VM's metadata)."""
        return self.files.qmp_socket

    @property
    def serial_log(self) -> Path:
        return self.files.serial_log

    @property
    def agent_endpoint(self) -> AgentEndpoint | None:
        if not self.spec.agent_channel:
            return None
        if self.vsock_cid is not None:
            return VsockEndpoint(self.vsock_cid)
        return SerialSocketEndpoint(self.files.agent_socket)

    @property
    def exit_info(self) -> ExitInfo | None:
        return self._exit_info

    async def start(self) -> None:
        if self._popen is not None:
            raise VmmStartError("this QEMU process was already started")
        validate(self.spec, self.files)
        if self._choose_accel is not None and self.accel is None:
            self.accel = await self._choose_accel(self.spec)
        command = self.command
        self.vm_dir.mkdir(parents=True, exist_ok=True)
        for path in self.files.sockets:
            _clear_stale_socket(path)
        loop = asyncio.get_running_loop()
        try:
            console_out, console_in = self.files.console_fifos
            make_fifo(console_in)
            self.console = ConsoleWriter.from_fifo(console_out, CappedLog(self.files.serial_log, fresh=True))
        except OSError as exc:
            raise VmmStartError(f"cannot set up the serial console: {exc.strerror or exc}") from exc
        try:
            # Popen rather than asyncio's subprocess: exits are watched through our own pidfd, and
            # asyncio's child watcher would race us to reap. Spawning takes a few milliseconds.
            with open(self.files.qemu_log, "wb") as log:  # noqa: ASYNC230
                self._popen = subprocess.Popen(  # noqa: ASYNC220
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    # Own session: a Ctrl+C at the terminal reaches our cleanup, not QEMU directly.
                    start_new_session=True,
                    preexec_fn=die_with_parent() if self.die_with_parent else None,
                )
        except OSError as exc:
            self._close_console()
            self._remove_files()
            raise VmmStartError(f"cannot run {self.binary}: {exc.strerror or exc}") from exc
        self._pidfd = os.pidfd_open(self._popen.pid)
        self._exited = loop.create_future()
        loop.add_reader(self._pidfd, self._on_exit)
        try:
            await self._wait_running()
        except BaseException:
            await self.kill()
            self._close_console()
            self._remove_files()
            raise

    async def _wait_running(self) -> None:
        assert self._exited is not None
        deadline = time.monotonic() + self.start_timeout
        last_error = "QMP socket never appeared"
        while time.monotonic() < deadline:
            if self._exited.done():
                # QEMU quitting before the guest runs means it refused the configuration
                # (missing TAP, locked image, unknown device, KVM refused, ...).
                raise VmmConfigError(f"QEMU did not start: {self._exited.result().reason}")
            if self.files.qmp_socket.exists():
                try:
                    status = await self.qmp.status()
                except QmpError as exc:
                    last_error = str(exc)
                else:
                    if status == "running":
                        return
                    last_error = f"QEMU status is {status!r}"
            await asyncio.sleep(_POLL)
        raise VmmStartError(f"QEMU not running after {self.start_timeout:.0f} s: {last_error}")

    def _on_exit(self) -> None:
        assert self._popen is not None and self._pidfd is not None and self._exited is not None
        returncode = self._popen.poll()
        if returncode is None:
            return  # readable without an exit should not happen; stay registered
        asyncio.get_running_loop().remove_reader(self._pidfd)
        os.close(self._pidfd)
        self._pidfd = None
        # The console's last words first: a readiness failure quotes them right after this.
        self._close_console()
        self._exit_info = _exit_info(returncode, _last_error_line(self.files.qemu_log), self._quit_sent)
        if not self._exited.done():
            self._exited.set_result(self._exit_info)

    async def wait(self) -> ExitInfo:
        if self._exited is None:
            raise VmmStartError("QEMU was never started")
        return await asyncio.shield(self._exited)

    async def request_shutdown(self) -> None:
        """ACPI power button. The guest may ignore it (no acpid in a minimal guest): ``stop`` copes."""
        if self._exit_info is None:
            await self.qmp.system_powerdown()

    async def stop(self, grace: float = 5.0) -> ExitInfo:
        if self._exited is None:
            raise VmmStartError("QEMU was never started")
        if self._exit_info is None and grace > 0:
            try:
                await self.qmp.system_powerdown()
            except QmpError:
                pass  # QMP gone or wedged: the harder steps below still work
            else:
                await self._wait_exit(grace)
        if self._exit_info is None:
            self._quit_sent = True
            try:
                await self.qmp.quit()
            except QmpError:
                pass
            else:
                await self._wait_exit(_STEP_TIMEOUT)
        if self._exit_info is None:
            self._signal(signal.SIGTERM)
            await self._wait_exit(_STEP_TIMEOUT)
        if self._exit_info is None:
            self._signal(signal.SIGKILL)
        info = await self.wait()
        self._remove_sockets()
        return info

    async def kill(self) -> ExitInfo:
        if self._exited is None:
            raise VmmStartError("QEMU was never started")
        self._signal(signal.SIGKILL)
        info = await self.wait()
        self._remove_sockets()
        return info

    async def _wait_exit(self, seconds: float) -> None:
        assert self._exited is not None
        try:
            await asyncio.wait_for(asyncio.shield(self._exited), seconds)
        except TimeoutError:
            pass

    def _signal(self, sig: signal.Signals) -> None:
        # Until the exit is reaped the pidfd pins the process; afterwards there is nothing to signal.
        if self._pidfd is not None:
            try:
                signal.pidfd_send_signal(self._pidfd, sig)
            except ProcessLookupError:
                pass  # exited a moment ago; _on_exit reaps it

    def _close_console(self) -> None:
        if self.console is not None:
            self.console.drain()
            self.console.close()

    def _remove_sockets(self) -> None:
        for path in self.files.sockets:
            path.unlink(missing_ok=True)

    def _remove_files(self) -> None:
        self._remove_sockets()
        CappedLog.remove_files(self.files.serial_log)
        for path in (self.files.qemu_log, *self.files.console_fifos):
            path.unlink(missing_ok=True)


def _clear_stale_socket(path: Path) -> None:
    """Remove a socket a dead QEMU left behind; refuse to touch one that is alive or not a socket.

    QEMU would silently replace a live socket, cutting another VM off from its controller.
    """
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise VmmStartError(f"{path} exists and is not a socket; refusing to replace it")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            path.unlink(missing_ok=True)
            return
        except OSError as exc:
            raise VmmStartError(f"socket {path} is unusable: {exc.strerror or exc}") from exc
    raise VmmStartError(f"socket {path} is in use by another process")


def _exit_info(returncode: int, last_error: str, quit_sent: bool = False) -> ExitInfo:
    if returncode < 0:
        sig = -returncode
        reason = f"qemu killed by {signal.Signals(sig).name}"
        info = ExitInfo(returncode=None, signal=sig, reason=reason)
    elif returncode == 0 and quit_sent:
        info = ExitInfo(0, None, "qemu quit on request")
    elif returncode == 0:
        info = ExitInfo(0, None, "qemu exited: the guest powered off or rebooted")
    else:
        info = ExitInfo(returncode, None, f"qemu exited with code {returncode}")
    if last_error:
        return ExitInfo(info.returncode, info.signal, f"{info.reason}: {last_error}")
    return info


def _last_error_line(log: Path, max_bytes: int = 4096) -> str:
    """QEMU's complaint on stderr, without the program-name prefix: the first line saying "error"
    (later lines are usually its consequences, like an assertion), else the last line."""
    try:
        with open(log, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - max_bytes))
            tail = f.read().decode(errors="replace")
    except OSError:
        return ""
    lines = [re.sub(r"^qemu-system-\w+: ", "", line.strip()) for line in tail.splitlines() if line.strip()]
    if not lines:
        return ""
    return next((line for line in lines if "error" in line.lower()), lines[-1])


def reattach_console(vm_dir: Path) -> ConsoleWriter | None:
    """The console of a QEMU adopted after a server restart: its FIFO, read again (None when the VM
    has none: started by a Clawpot that wrote the console to a file)."""
    files = QemuFiles.in_dir(vm_dir)
    console_out, _ = files.console_fifos
    if not console_out.exists():
        return None
    return ConsoleWriter.from_fifo(console_out, CappedLog(files.serial_log))
