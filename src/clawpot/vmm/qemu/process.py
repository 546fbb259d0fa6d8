"""One QEMU process: spawn, wait until the guest CPU runs, notice the exit at once, reap, clean up.

``start()`` runs a boot recipe (``clawpot.vmm.qemu.boot.QEMU_BOOT`` by default: validate → choose the
accelerator → prepare files → build the command line → create the cgroup → spawn qemu → wait until QMP
says running), each step a call on this object. The process is spawned and watched by
``clawpot.vmm.spawn``, as Firecracker's is: a pidfd turns readable the moment QEMU exits, whatever the
reason (guest poweroff, crash, ``kill -9`` from outside), so ``wait()`` resolves within one loop
iteration, and signals go to our QEMU and never to a recycled PID.

The serial console: before QEMU is spawned the VM's console FIFOs are made and a ``ConsoleWriter``
reads ``console.out``, keeping ``console.log`` capped and rotated for the process's whole life
(``clawpot.vmm.console``).

Unprivileged (``run_as``, the VMM account by default): "prepare files" also hands QEMU's files over
(``confine``: sockets, drives, TAPs, kernel and RAM file as fds, the VM directory searchable by the
account, an empty chroot), the command line names those fds, and "spawn qemu" execs QEMU as the
account through ``setpriv`` in the VM directory.

Its own cgroup (``clawpot.vmm.cgroups``): "create the cgroup" makes it with the spec's limits, and
"spawn qemu" starts a shell that joins it (as root: the cgroup is root's) and execs the rest of the
chain (setpriv, then QEMU), so QEMU is charged there from its first instruction.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import stat
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from clawpot import limits
from clawpot.agent_client.endpoints import AgentEndpoint, SerialSocketEndpoint, VsockEndpoint
from clawpot.vmm.account import VMM_USER, VmmAccount, vmm_account
from clawpot.vmm.base import ExitInfo, VmmConfigError, VmmProcess, VmmStartError
from clawpot.vmm.cgroups import CgroupLimits, VmCgroup
from clawpot.vmm.console import CappedLog, ConsoleWriter, make_fifo
from clawpot.vmm.logtail import tail_lines
from clawpot.vmm.qemu import confine, snapshots
from clawpot.vmm.qemu.boot import QEMU_BOOT
from clawpot.vmm.qemu.cmdline import (
    MEMFD_RAM,
    QEMU_BINARY,
    Accel,
    QemuFiles,
    RamBacking,
    build_command,
    validate,
)
from clawpot.vmm.qemu.qmp import QmpControl, QmpError
from clawpot.vmm.snapshot import DRIVE_PREFIX, MEMORY_NAME, Snapshot, SnapshotWriter, spec_entry
from clawpot.vmm.spawn import VmmChild, spawn
from clawpot.vmm.spec import BackendKind, VmSpec
from clawpot.vmm.steps import Recipe

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
        recipe: Recipe[QemuProcess] = QEMU_BOOT,
        restore_from: Snapshot | None = None,
        persistent_qmp: bool = False,
        run_as: str | None = VMM_USER,
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
        self.recipe = recipe
        self.files = QemuFiles.in_dir(vm_dir, qmp_socket=qmp_socket)
        self.qmp = QmpControl(self.files.qmp_socket, persistent=persistent_qmp)
        # The argv the launch step runs: set by the "build the command line" step.
        self.argv: list[str] | None = None
        self.child: VmmChild | None = None
        self.console: ConsoleWriter | None = None
        # A clean exit after our QMP quit is not the guest powering off: say which it was.
        self._quit_sent = False
        # A restore (``boot.QEMU_RESTORE``): RAM maps the snapshot's memory privately, the state is
        # loaded from its stream before the guest runs.
        self.restore_from = restore_from
        self.ram: RamBacking = MEMFD_RAM if restore_from is None else RamBacking(restore_from.memory)
        self.restored_drives: list[Path] = []
        # The account QEMU runs as (None: as we run, root; only the KVM probe, which boots nothing
        # but our own kernel and image). Resolved, with the fds QEMU gets, by "prepare files".
        self.run_as = run_as
        self.account: VmmAccount | None = None
        self.groups: tuple[int, ...] = ()
        self.handover: confine.Handover | None = None
        # The VM's own cgroup (``create_cgroup``), named by its directory's name: the VM's id.
        self.cgroup: VmCgroup | None = None

    @property
    def command(self) -> list[str]:
        if self.accel is None:
            raise VmmStartError("the accelerator is chosen when the VM starts")
        name = "clawpot-" + re.sub(r"[^A-Za-z0-9_.-]", "_", self.vm_dir.name)
        return build_command(
            self.spec,
            self.files,
            self.accel,
            binary=self.binary,
            vsock_cid=self.vsock_cid,
            name=name,
            ram=self.ram,
            incoming=self.restore_from is not None,
            fds=self.handover.fds if self.handover is not None else None,
        )

    @property
    def pid(self) -> int | None:
        return self.child.pid if self.child is not None else None

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
        return self.child.exit_info if self.child is not None else None

    async def start(self) -> None:
        """Run ``self.recipe``; on failure its undos ran (no process, no files) and the error is QEMU's."""
        if self.child is not None or self.argv is not None:
            raise VmmStartError("this QEMU process was already started")
        await self.recipe.run(self, label=f"qemu {self.vm_dir.name}")

    # -- what the boot steps call (clawpot.vmm.qemu.boot) --------------------------------------------

    def validate(self) -> None:
        validate(self.spec, self.files)

    async def choose_accel(self) -> None:
        if self._choose_accel is not None and self.accel is None:
            self.accel = await self._choose_accel(self.spec)

    def build_command(self) -> None:
        self.argv = self.command

    def prepare_files(self) -> None:
        """The VM directory, its sockets' places (stale ones removed, live ones refused) and the console
        FIFOs with their reader; unprivileged, what QEMU gets handed (``confine``). On failure nothing
        of it is left."""
        if self.run_as is not None:
            self.account = vmm_account(self.run_as)
            self.groups = confine.kvm_groups(self.accel or Accel.TCG, self.account)
        self.vm_dir.mkdir(parents=True, exist_ok=True)
        for path in self.files.sockets:
            _clear_stale_socket(path)
        try:
            console_out, console_in = self.files.console_fifos
            make_fifo(console_in)
            self.console = ConsoleWriter.from_fifo(console_out, CappedLog(self.files.serial_log, fresh=True))
        except OSError as exc:
            self.remove_files()
            raise VmmStartError(f"cannot set up the serial console: {exc.strerror or exc}") from exc
        if self.account is not None:
            try:
                confine.prepare_vm_dir(self.vm_dir, self.files, self.account)
                if self.ram.snapshot_memory is not None:
                    confine.grant_snapshot_memory(self.ram.snapshot_memory, self.account)
                self.handover = confine.Handover.open(
                    self.spec,
                    self.files,
                    vsock=self.vsock_cid is not None,
                    snapshot_memory=self.ram.snapshot_memory,
                )
            except (OSError, VmmStartError) as exc:
                self.remove_files()
                if isinstance(exc, VmmStartError):
                    raise
                raise VmmStartError(f"cannot hand QEMU its files: {exc.strerror or exc}") from exc

    def remove_files(self) -> None:
        """Stop reading the console; remove the sockets, console files, FIFOs, chroot and QEMU's log."""
        self._close_handover()
        self._close_console()
        self._remove_sockets()
        CappedLog.remove_files(self.files.serial_log)
        for path in (self.files.qemu_log, *self.files.console_fifos):
            path.unlink(missing_ok=True)
        confine.remove_vm_dir_files(self.vm_dir)

    def create_cgroup(self) -> None:
        """The VM's cgroup with the limits of its spec (``clawpot.vmm.cgroups``)."""
        cgroup = VmCgroup(self.vm_dir.name)
        cgroup.create(CgroupLimits.for_vm(self.spec.vcpus, self.spec.memory_mib))
        self.cgroup = cgroup

    def remove_cgroup(self) -> None:
        if self.cgroup is not None:
            self.cgroup.remove(attempts=limits.CGROUP_REMOVE_ATTEMPTS)

    def launch(self, argv: Sequence[str] | None = None) -> None:
        """Run ``argv`` (default: the built command line) with its output in QEMU's log file, inside
        the VM's cgroup when ``create_cgroup`` made one (joined before QEMU runs: its every allocation
        is charged there; once QEMU is reaped the cgroup is removed and an OOM kill is named as such)."""
        if argv is None:
            if self.argv is None:
                raise VmmStartError("the command line is built before QEMU is launched")
            argv = self.argv
        die_with_parent = self.die_with_parent
        pass_fds: list[int] = []
        if self.account is not None:
            # setpriv would report a missing binary only as its own exit code: say it here, as spawn does.
            if shutil.which(argv[0]) is None:
                raise VmmStartError(f"cannot run {argv[0]}: No such file or directory")
            argv = [
                *confine.launcher(self.account, groups=self.groups, die_with_parent=die_with_parent),
                *argv,
            ]
            die_with_parent = False  # setpriv sets it after the uid change, which clears an earlier one
            pass_fds = list(self.handover.keep) if self.handover is not None else []
        cgroup = self.cgroup
        if cgroup is not None:
            # Outermost: the shell joins the cgroup as root, then execs setpriv (which drops to the
            # account, then execs QEMU) or QEMU itself; the passed fds stay open across every exec.
            argv = cgroup.wrap(list(argv))
        try:
            log = open(self.files.qemu_log, "wb")  # noqa: SIM115 - closed below, QEMU has a copy
        except OSError as exc:
            raise VmmStartError(f"cannot create {self.files.qemu_log}: {exc.strerror or exc}") from exc
        try:
            with log:
                self.child = spawn(
                    argv,
                    stdout=log,
                    stderr=log,
                    on_exit=cgroup.finish(self._on_exit) if cgroup is not None else self._on_exit,
                    die_with_parent=die_with_parent,
                    what="qemu",
                    pass_fds=pass_fds,
                    # Unprivileged, QEMU names its console FIFOs and chroot relative to the VM directory.
                    cwd=str(self.vm_dir) if self.account is not None else None,
                )
        finally:
            self._close_handover()  # QEMU has its copies (or failed to start)

    async def wait_running(self) -> None:
        """Until QMP reports the guest CPU running; QEMU exiting first means it refused the config."""
        child = self._spawned()
        deadline = time.monotonic() + self.start_timeout
        last_error = "QMP socket never appeared"
        while time.monotonic() < deadline:
            if child.exit_info is not None:
                # QEMU quitting before the guest runs means it refused the configuration
                # (missing TAP, locked image, unknown device, KVM refused, ...).
                raise VmmConfigError(f"QEMU did not start: {child.exit_info.reason}")
            if self.files.qmp_socket.exists():
                try:
                    # Bounded by the deadline: a socket we bound for QEMU accepts the connection
                    # before QEMU runs, and a QEMU that never gets there never greets.
                    async with asyncio.timeout(max(deadline - time.monotonic(), _POLL)):
                        status = await self.qmp.status()
                except QmpError as exc:
                    last_error = str(exc)
                except TimeoutError:
                    last_error = "QMP did not answer"
                else:
                    if status == "running":
                        return
                    last_error = f"QEMU status is {status!r}"
            await asyncio.sleep(_POLL)
        raise VmmStartError(f"QEMU not running after {self.start_timeout:.0f} s: {last_error}")

    # -- what the restore steps add (boot.QEMU_RESTORE) ------------------------------------------------

    def _snapshot(self) -> Snapshot:
        if self.restore_from is None:
            raise VmmStartError("this QEMU process does not restore a snapshot")
        return self.restore_from

    async def verify_snapshot(self) -> None:
        """Check every file against the manifest (hashing what this process has not verified yet)."""
        from clawpot.vmm.snapshot import open_snapshot

        snap = self._snapshot()
        version = await asyncio.to_thread(snapshots.qemu_version, self.binary)
        self.restore_from = await asyncio.to_thread(
            open_snapshot, snap.directory, backend=self.kind, backend_version=version
        )

    async def copy_drives(self) -> None:
        """The snapshot's writable drives, copied into the VM directory (never the base image)."""
        self.vm_dir.mkdir(parents=True, exist_ok=True)
        self.restored_drives = await asyncio.to_thread(self._snapshot().copy_drives, self.vm_dir)

    def remove_drives(self) -> None:
        for path in self.restored_drives:
            path.unlink(missing_ok=True)
        self.restored_drives = []

    async def load_state(self) -> None:
        await snapshots.load_state(self, self._snapshot().state)

    # -- pause, resume, snapshot -----------------------------------------------------------------------

    async def pause(self) -> None:
        """QMP ``stop``: the vCPUs stop; QEMU drains and flushes its block layer."""
        await self.qmp.execute_quick("stop")

    async def resume(self) -> None:
        """QMP ``cont`` (also from ``postmigrate``, the state a snapshot leaves)."""
        await self.qmp.execute_quick("cont")

    async def snapshot(self, directory: Path) -> None:
        """A complete snapshot of the paused VM at ``directory`` (``capture`` then ``seal``)."""
        writer = await self.capture(directory)
        await asyncio.to_thread(self.seal, writer)

    async def capture(self, directory: Path) -> SnapshotWriter:
        """The part that needs the VM paused: state, RAM and writable drives into a partial snapshot.
        ``seal`` it (hashing, manifest, rename) after resuming to keep the pause short."""
        return await snapshots.capture(self, directory)

    def seal(self, writer: SnapshotWriter) -> Snapshot:
        """Finish a ``capture`` (blocking: hashes the files); on failure the partial snapshot is gone."""
        with writer:
            drive_files = {d.drive_id: DRIVE_PREFIX + d.drive_id for d in self.spec.drives if not d.read_only}
            snapshot = writer.seal(
                backend=self.kind,
                backend_version=snapshots.qemu_version(self.binary),
                spec=spec_entry(self.spec, drive_files),
                backend_options={
                    "accel": (self.accel or Accel.TCG).value,
                    "ram": "stream" if snapshots.ram_in_stream(self) else "file",
                },
            )
        if self.account is not None:
            # Now rather than at the first restore: the change would make that restore hash it again.
            confine.grant_snapshot_memory(snapshot.directory / MEMORY_NAME, self.account)
        return snapshot

    def _on_exit(self, returncode: int) -> ExitInfo:
        # The console's last words first: a readiness failure quotes them right after this.
        self._close_console()
        self.qmp.close()
        return _exit_info(returncode, _last_error_line(self.files.qemu_log), self._quit_sent)

    # -- after the start -----------------------------------------------------------------------------

    async def wait(self) -> ExitInfo:
        return await self._spawned().wait()

    async def request_shutdown(self) -> None:
        """ACPI power button. The guest may ignore it (no acpid in a minimal guest): ``stop`` copes."""
        if self.exit_info is None:
            await self.qmp.system_powerdown()

    async def stop(self, grace: float = 5.0) -> ExitInfo:
        child = self._spawned()
        if child.exit_info is None and grace > 0:
            try:
                await self.qmp.system_powerdown()
            except QmpError:
                pass  # QMP gone or wedged: the harder steps below still work
            else:
                await child.wait_at_most(grace)
        if child.exit_info is None:
            self._quit_sent = True
            try:
                await self.qmp.quit()
            except QmpError:
                pass
            else:
                await child.wait_at_most(_STEP_TIMEOUT)
        info = await child.terminate(_STEP_TIMEOUT)
        self._remove_sockets()
        return info

    async def kill(self) -> ExitInfo:
        info = await self._spawned().terminate(0)
        self._remove_sockets()
        return info

    def detach(self) -> None:
        """Let go of QMP (the next server connects to it); QEMU runs on."""
        self.qmp.close()

    def _spawned(self) -> VmmChild:
        if self.child is None:
            raise VmmStartError("QEMU was never started")
        return self.child

    def _close_handover(self) -> None:
        if self.handover is not None:
            self.handover.close()
            self.handover = None

    def _close_console(self) -> None:
        if self.console is not None:
            self.console.drain()
            self.console.close()

    def _remove_sockets(self) -> None:
        for path in self.files.sockets:
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


def _last_error_line(log: Path, max_bytes: int = limits.QEMU_LOG_TAIL_BYTES) -> str:
    """QEMU's complaint on stderr, without the program-name prefix: the first line saying "error"
    (later lines are usually its consequences, like an assertion), else the last line."""
    tail = tail_lines(log, max_bytes)
    lines = [re.sub(r"^qemu-system-\w+: ", "", line.strip()) for line in tail if line.strip()]
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
