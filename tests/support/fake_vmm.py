"""A fake VMM backend for tests without root or a VM, plugged in where real backends plug in.

FAKE: there is no hypervisor here. What stands in for one is a real process: the real guest agent
(``python -m clawpot.agent``) listening on a unix socket in the VM's directory. So everything above the
VMM interface runs for real: the boot steps and their undo stack, the exit watcher, the agent client
and its health checks, the SQLite store, reconcile and adoption by PID after a "server restart".

What a test can make it do, through the VM's labels (``CreateVm`` labels reach ``VmSpec.labels``):

- ``fake-vmm=refuse``   ``start`` fails before spawning anything (the VMM rejected its configuration)
- ``fake-vmm=exit``     the process exits at once with status 3, before the agent answers
- ``fake-vmm=hang``     the process runs but no agent ever answers (readiness waits: cancel a create)

and, from outside, ``crash(pid)`` (SIGKILL: what a VMM crash looks like to the host).

With ``Feature.PAUSE`` (``FakeVmmBackend(features=...)``), pause and resume are SIGSTOP and SIGCONT of
that process, booted here or attached: a paused "guest" really stops answering, as a paused VM does.

``install(kind)`` registers it with ``clawpot.vmm.registry`` for ``kind`` (the registry knows only real
kinds; the store records the kind it stands in for). ``uninstall`` puts the real factory back.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

from clawpot.agent_client.endpoints import AgentEndpoint, UnixSocketEndpoint
from clawpot.node.node import NodeConfig
from clawpot.vmm import registry
from clawpot.vmm.adopted import AttachedProcess
from clawpot.vmm.base import (
    NO_FEATURES,
    AttachRecord,
    Capabilities,
    ExitInfo,
    Feature,
    VmmBackend,
    VmmProcess,
    VmmStartError,
)
from clawpot.vmm.spec import BackendKind, VmSpec

LABEL = "fake-vmm"
AGENT_SOCKET = "agent.sock"
CONSOLE = "console.log"


class FakeVmmProcess(VmmProcess):
    """One fake "VMM": a real agent process, watched as the server watches a real VMM (our child)."""

    def __init__(self, kind: BackendKind, spec: VmSpec, vm_dir: Path) -> None:
        self.kind = kind
        self.spec = spec
        self.vm_dir = vm_dir
        self.mode = spec.labels.get(LABEL, "")
        self._proc: asyncio.subprocess.Process | None = None
        self._exit: ExitInfo | None = None
        self._reaped: asyncio.Future[ExitInfo] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def serial_log(self) -> Path:
        return self.vm_dir / CONSOLE

    @property
    def agent_endpoint(self) -> AgentEndpoint | None:
        return UnixSocketEndpoint(self.vm_dir / AGENT_SOCKET) if self.spec.agent_channel else None

    @property
    def exit_info(self) -> ExitInfo | None:
        return self._exit

    async def start(self) -> None:
        if self.mode == "refuse":
            raise VmmStartError("fake VMM refused its configuration (label fake-vmm=refuse)")
        argv = [sys.executable, "-m", "clawpot.agent", "--listen-unix", str(self.vm_dir / AGENT_SOCKET)]
        if self.mode == "exit":
            argv = [sys.executable, "-c", "import sys; print('fake VMM: exiting'); sys.exit(3)"]
        elif self.mode == "hang":
            argv = [sys.executable, "-c", "import time; time.sleep(3600)"]
        with open(self.serial_log, "ab") as console:  # noqa: ASYNC230 - a local file, opened once
            # Its own session, like a real VMM started by the server: a signal to the test's process
            # group does not reach it, and it outlives the "server" object that started it.
            self._proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=console,
                stderr=console,
                start_new_session=True,
            )
        self._reaped = asyncio.ensure_future(self._reap(self._proc))

    async def _reap(self, proc: asyncio.subprocess.Process) -> ExitInfo:
        code = await proc.wait()
        if code < 0:
            info = ExitInfo(None, -code, f"fake VMM killed by {signal.Signals(-code).name}")
        else:
            info = ExitInfo(code, None, f"fake VMM exited with status {code}")
        self._exit = info
        with contextlib.suppress(FileNotFoundError):
            (self.vm_dir / AGENT_SOCKET).unlink()
        return info

    async def wait(self) -> ExitInfo:
        if self._reaped is None:
            raise VmmStartError("fake VMM was never started")
        return await asyncio.shield(self._reaped)

    def _signal(self, sig: int) -> None:
        if self._proc is not None and self._exit is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(sig)

    async def request_shutdown(self) -> None:
        self._signal(signal.SIGTERM)

    async def stop(self, grace: float = 5.0) -> ExitInfo:
        if self._reaped is None:
            return ExitInfo(None, None, "fake VMM was never started")
        self._signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.wait(), max(grace, 0.1))
        except TimeoutError:
            return await self.kill()

    async def kill(self) -> ExitInfo:
        if self._reaped is None:
            return ExitInfo(None, None, "fake VMM was never started")
        self._signal(signal.SIGKILL)
        return await self.wait()

    def detach(self) -> None:
        """Stop watching; the process keeps running (a server leaving its VMs for the next one)."""

    async def pause(self) -> None:
        self._signal(signal.SIGSTOP)

    async def resume(self) -> None:
        self._signal(signal.SIGCONT)


class FakeAttachedProcess(AttachedProcess):
    """A fake "VMM" an earlier node left running: paused and resumed by signals too."""

    async def pause(self) -> None:
        if self.pid is not None:
            os.kill(self.pid, signal.SIGSTOP)

    async def resume(self) -> None:
        if self.pid is not None:
            os.kill(self.pid, signal.SIGCONT)


class FakeVmmBackend(VmmBackend):
    """A backend that starts ``FakeVmmProcess``es; ``attach`` is the base class's (pidfd) one."""

    def __init__(self, kind: BackendKind = BackendKind.QEMU, features: Feature = NO_FEATURES) -> None:
        self.kind = kind
        self.features = features
        self.started: list[FakeVmmProcess] = []
        self.attached: list[AttachRecord] = []

    def capabilities(self) -> Capabilities:
        return Capabilities(
            self.kind, True, "fake VMM (tests): the real agent as the VMM process", features=self.features
        )

    def prepare(self, spec: VmSpec, vm_dir: Path) -> VmmProcess:
        process = FakeVmmProcess(self.kind, spec, vm_dir)
        self.started.append(process)
        return process

    def attach(self, record: AttachRecord) -> VmmProcess:
        self.attached.append(record)
        return FakeAttachedProcess(record, self.kind, console=None)

    def reattach_console(self, vm_dir: Path) -> None:
        return None  # its console is a plain file, never a FIFO: nothing to take back


def crash(pid: int) -> None:
    """What a VMM crash looks like from the host: the process dies of SIGKILL."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def install(backend: FakeVmmBackend) -> None:
    """Make ``backend`` what the registry hands out for its kind."""
    registry.register_backend(backend.kind, lambda _options: backend)


def uninstall(kind: BackendKind) -> None:
    registry.restore_backend(kind)


def fake_assets(data_dir: Path) -> None:
    """Files where the server expects its kernel and root image: the fake VMM boots neither, but the
    server and the boot's validation step check they are there (a 64-bit ELF header, a readable file)."""
    assets = data_dir / "assets"
    assets.mkdir(parents=True, exist_ok=True)
    (assets / "vmlinux").write_bytes(b"\x7fELF\x02" + bytes(59))
    (assets / "rootfs.ext4").write_bytes(bytes(4096))


def node_config(data_dir: Path, **overrides: object) -> NodeConfig:
    """A node on ``data_dir`` that uses the backend ``install`` registered for QEMU, without a network."""
    settings: dict[str, object] = {
        "data_dir": data_dir,
        "default_backend": BackendKind.QEMU,
        "bridge": None,  # no host network: the unit suite runs without privileges
        "ready_timeout": 30.0,
        "stop_grace": 2.0,
        "health_interval": 3600.0,
    }
    settings.update(overrides)
    return NodeConfig(**settings)  # type: ignore[arg-type]
