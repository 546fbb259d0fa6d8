"""``FirecrackerVmm``: one VM under firecracker, booted from a configuration file, API socket on.

``start()`` runs a boot recipe (``clawpot.vmm.firecracker.boot.FIRECRACKER_BOOT`` by default: write the
configuration → prepare files → spawn firecracker with ``--config-file`` → wait until it reports the
microVM started; ``clawpot.vmm.steps`` runs it). Each step that leaves something behind pushes its undo;
when a later step fails the undos run in reverse, so a failed start leaves no process and no socket.

Why a file and not one API call per resource: firecracker then builds and starts the VM as it comes up,
with no HTTP round trips; spawn → started takes about a third less time than configuring over the API,
sequentially or in parallel (bench/firecracker_start.py measures all three against a bare launch). The API
socket stays on, so everything after the start (status, Ctrl+Alt+Del, later pause and snapshots) goes
through the API as before. Two consequences of the file:

- Success is firecracker's own log line saying it started the microVM from the file. Nothing may ask the
  API before that line: if the build fails while an API request waits, firecracker's API thread panics
  and the process dies of SIGSYS before it logs why (measured with v1.12.1). After the line the API
  answers at once.
- A configuration firecracker refuses makes it exit with code 1, its reason on the last ERROR line of
  its log; that line becomes the error (``FirecrackerConfigRejected``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import re
import shutil
import time
from pathlib import Path

from clawpot import limits
from clawpot.agent_client.endpoints import AgentEndpoint, HybridVsockEndpoint
from clawpot.vmm.base import ExitInfo, VmmProcess, VmmStartError
from clawpot.vmm.cgroups import CgroupLimits, VmCgroup
from clawpot.vmm.firecracker import models, snapshots
from clawpot.vmm.firecracker.boot import FIRECRACKER_BOOT
from clawpot.vmm.firecracker.client import DEFAULT_TIMEOUT, FirecrackerClient
from clawpot.vmm.firecracker.errors import FirecrackerConfigRejected, FirecrackerError
from clawpot.vmm.firecracker.jail import Jail
from clawpot.vmm.firecracker.logwatch import LogFollower
from clawpot.vmm.firecracker.metrics import METRICS_FIFO_NAME, MetricsReader
from clawpot.vmm.firecracker.process import FirecrackerProcess, LaunchFiles, last_error_line
from clawpot.vmm.snapshot import Snapshot, SnapshotWriter
from clawpot.vmm.spec import BackendKind, VmSpec
from clawpot.vmm.steps import Recipe

log = logging.getLogger(__name__)

# The guest's vsock CID; the host side is a unix socket, so every VM can use the same one.
GUEST_CID = 3
# After SIGTERM, how long firecracker gets before SIGKILL.
TERM_SECONDS = 3.0
# How long a step's failure waits for a dying firecracker to be reaped, to report why it died.
_DEATH_GRACE = 0.5
# What firecracker logs (Info level) once the VM from --config-file runs: its InstanceStart answer.
STARTED_LINE = b"Successfully started microvm that was configured from one single json"
# The wrapping firecracker puts around a refused configuration's reason (RunWithApiError ... from Json).
_CONFIG_FAILURE = re.compile(
    r"Failed to build MicroVM from Json: (?:Could not Start MicroVM from one single json: )?"
)

# A snapshot file firecracker writes in its jail, before it is moved out.
_SNAPSHOT_PARTIAL = "snapshot-partial."
API_SOCKET_NAME = "firecracker.sock"
VSOCK_SOCKET_NAME = "vsock.sock"
CONFIG_NAME = "firecracker.json"
LOG_NAME = "firecracker.log"
STDERR_NAME = "firecracker.stderr"
SERIAL_NAME = "serial.log"


class FirecrackerVmm(VmmProcess):
    kind = BackendKind.FIRECRACKER

    def __init__(
        self,
        binary: Path,
        spec: VmSpec,
        vm_dir: Path,
        *,
        api_socket: Path | None = None,
        api_timeout: float = 10.0,
        die_with_parent: bool = True,
        recipe: Recipe[FirecrackerVmm] = FIRECRACKER_BOOT,
        restore_from: Snapshot | None = None,
        jail: Jail | None = None,
    ) -> None:
        self.spec = spec
        # A restore (``boot.FIRECRACKER_RESTORE``): no configuration file; the snapshot is loaded over
        # the API into a fresh process.
        self.restore_from = restore_from
        self.restored_drives: list[Path] = []
        self.recipe = recipe
        self.vm_dir = vm_dir
        self.api_timeout = api_timeout
        self.start_timeout = api_timeout + DEFAULT_TIMEOUT
        # Under the jailer (``jail``) firecracker sees only its chroot: it binds its sockets there, and
        # the VM directory keeps symbolic links to them at the usual names (a unix socket's path must
        # fit 108 bytes: the chroot's is longer); its log and configuration stay in the VM directory,
        # hard-linked into the chroot, and so does the console FIFO (a file descriptor it inherits).
        self.jail = jail
        self.vsock_path = vm_dir / VSOCK_SOCKET_NAME
        self.files = LaunchFiles(
            api_socket=api_socket or vm_dir / API_SOCKET_NAME,
            log=vm_dir / LOG_NAME,
            serial=vm_dir / SERIAL_NAME,
            stderr=vm_dir / STDERR_NAME,
            config=vm_dir / CONFIG_NAME if restore_from is None else None,
            # Firecracker's own metrics: a FIFO named in the configuration (a restore: over the API).
            metrics=vm_dir / METRICS_FIFO_NAME,
        )
        self.process = FirecrackerProcess(
            binary, vm_dir.name, self.files, die_with_parent=die_with_parent, cwd=None if jail else vm_dir
        )
        self._started = False
        self._client: FirecrackerClient | None = None

    # -- VmmProcess ----------------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self.process.pid

    @property
    def api_socket(self) -> Path:
        return self.files.api_socket

    @property
    def control_socket(self) -> Path:
        return self.files.api_socket

    @property
    def metrics(self) -> MetricsReader | None:
        """Firecracker's own metrics, as far as read (None before the start)."""
        return self.process.metrics

    @property
    def serial_log(self) -> Path:
        return self.files.serial

    @property
    def log_path(self) -> Path:
        return self.files.log

    @property
    def agent_endpoint(self) -> AgentEndpoint | None:
        return HybridVsockEndpoint(self.vsock_path) if self.spec.agent_channel else None

    @property
    def exit_info(self) -> ExitInfo | None:
        return self.process.exit_info

    @property
    def client(self) -> FirecrackerClient:
        """The API client, made on first use once the VM runs (nothing may call the API before)."""
        if not self._started:
            raise RuntimeError("firecracker is not started")
        if self._client is None:
            self._client = FirecrackerClient(self.files.api_socket)
        return self._client

    async def start(self) -> None:
        """Run ``self.recipe``; on failure its undos ran and the error names the step."""
        await self.recipe.run(self, label=f"firecracker {self.vm_dir.name}", explain=self._start_failure)

    async def request_shutdown(self) -> None:
        if self._started and self.process.running:
            await self.client.send_ctrl_alt_del()

    async def stop(self, grace: float = 5.0) -> ExitInfo:
        if self.process.running and grace > 0:
            try:
                await self.request_shutdown()
            except FirecrackerError as exc:
                log.debug("SendCtrlAltDel failed (%s); going on with SIGTERM", exc)
            await self.process.wait_at_most(grace)
        return await self._terminate(self.term_seconds)

    async def kill(self) -> ExitInfo:
        return await self._terminate(term_seconds=0)

    @property
    def term_seconds(self) -> float:
        """How long SIGTERM is given. A jailed firecracker is the init of its PID namespace, and the
        kernel drops signals from outside it that it has no handler for: SIGTERM never arrives."""
        return 0.0 if self.jail is not None else TERM_SECONDS

    async def wait(self) -> ExitInfo:
        return await self.process.wait()

    # -- what the boot steps call (clawpot.vmm.firecracker.boot) -------------------------------------

    def config(self) -> models.ConfigFile:
        """The whole VM as firecracker's configuration file describes it.

        Metrics go to a FIFO the launcher reads and bounds (``metrics``), never to a file: firecracker
        would append ~4.5 KB to it every minute (~6.5 MB a day per VM, never trimmed).
        """
        spec = self.spec
        return models.ConfigFile(
            boot_source=models.BootSource(kernel_image_path=self._own(spec.kernel), boot_args=spec.boot_args),
            # No drive is flagged is_root_device: the spec's boot args already say root=/dev/vda, and
            # Firecracker would append a second "root=/dev/vda ro". Unflagged drives attach in order,
            # so drives[0] is still vda.
            drives=tuple(
                models.Drive(
                    drive_id=d.drive_id,
                    path_on_host=self._own(d.path),
                    is_root_device=False,
                    is_read_only=d.read_only,
                )
                for d in spec.drives
            ),
            machine_config=models.MachineConfiguration(vcpu_count=spec.vcpus, mem_size_mib=spec.memory_mib),
            network_interfaces=tuple(
                models.NetworkInterface(iface_id=n.iface_id, host_dev_name=n.tap_name, guest_mac=n.mac)
                for n in spec.network_interfaces
            ),
            vsock=(
                models.Vsock(guest_cid=GUEST_CID, uds_path=self._own(self.vsock_path))
                if spec.agent_channel
                else None
            ),
            metrics=(
                models.Metrics(metrics_path=self._own(self.files.metrics))
                if self.files.metrics is not None
                else None
            ),
        )

    def _own(self, path: Path) -> Path:
        """A file of this VM's directory by its name alone (firecracker runs in the directory), so a
        snapshot records names a restore in another directory resolves to its own copies; shared files
        (kernel, base image) keep their absolute path. In a jail every file is linked into its root
        under its name (``jail.prepare``), and firecracker runs there."""
        if self.jail is not None:
            return Path(path.name)
        return Path(path.name) if path.parent == self.vm_dir else path

    def seen(self, path: Path) -> Path:
        """The path firecracker itself opens for a host path (the same without a jail)."""
        return self.jail.inside(path) if self.jail is not None else path

    def create_cgroup(self) -> None:
        """The VM's cgroup with the limits of its spec (without the jailer, which makes it itself)."""
        cgroup = VmCgroup(self.vm_dir.name)
        cgroup.create(self.cgroup_limits())
        self.process.cgroup = cgroup

    def cgroup_limits(self) -> CgroupLimits:
        return CgroupLimits.for_vm(self.spec.vcpus, self.spec.memory_mib)

    def remove_cgroup(self) -> None:
        if self.process.cgroup is not None:
            self.process.cgroup.remove(attempts=limits.CGROUP_REMOVE_ATTEMPTS)

    def write_config(self) -> None:
        config = self.config()  # validated before anything is written
        assert self.files.config is not None
        self.files.config.write_text(config.model_dump_json(exclude_none=True, by_alias=True))

    async def wait_started(self) -> None:
        """Until firecracker's log says the microVM from the file started; a refusal is its own error."""
        async with LogFollower(self.files.log) as follower:
            started = asyncio.ensure_future(follower.wait_for(STARTED_LINE))
            exited = asyncio.ensure_future(self.process.wait())
            try:
                done, _ = await asyncio.wait(
                    {started, exited}, timeout=self.start_timeout, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                started.cancel()
                exited.cancel()  # process.wait() shields the reaper: this only drops our wait
        if started in done:  # even if it exited right after: the reaper reports that as a crash
            started.result()  # re-raises if reading the log failed
            self._started = True
            return
        if exited in done:
            raise self._refused(exited.result())
        raise VmmStartError(f"firecracker did not start the microVM within {self.start_timeout:.0f}s")

    def _refused(self, info: ExitInfo) -> FirecrackerError:
        """Firecracker exited while building the VM from the file: its last error is the reason."""
        line = last_error_line(self.files.log)
        if line is not None and _CONFIG_FAILURE.search(line):
            return FirecrackerConfigRejected(
                f"firecracker rejected the configuration: {_CONFIG_FAILURE.split(line, maxsplit=1)[-1]}"
            )
        return FirecrackerError(info.reason)

    # -- pause, resume, snapshot (``snapshots`` says what Firecracker allows) ---------------------------

    async def pause(self) -> None:
        await self.client.set_vm_state(models.VmStateChange.PAUSED)

    async def resume(self) -> None:
        await self.client.set_vm_state(models.VmStateChange.RESUMED)

    async def snapshot(self, directory: Path) -> None:
        writer = await self.capture(directory)
        await asyncio.to_thread(self.seal, writer)

    async def capture(self, directory: Path) -> SnapshotWriter:
        """The part that needs the VM paused; ``seal`` it after resuming."""
        return await snapshots.capture(self, directory)

    def seal(self, writer: SnapshotWriter) -> Snapshot:
        return snapshots.seal(self, writer)

    # -- what the restore steps add (boot.FIRECRACKER_RESTORE) ----------------------------------------

    def snapshot_target(self, final: Path) -> Path:
        """Where firecracker writes the snapshot file that ends up at ``final``: there, or in its jail
        under a name of its own (``collect_snapshot_file`` moves it)."""
        if self.jail is None:
            return final.resolve()
        partial = self.jail.root / f"{_SNAPSHOT_PARTIAL}{final.name}"
        partial.unlink(missing_ok=True)  # never write through a link of some other file
        return self.jail.inside(partial)

    def collect_snapshot_file(self, final: Path) -> None:
        """Move a snapshot file firecracker wrote in its jail to ``final`` (a no-op without a jail)."""
        if self.jail is None:
            return
        partial = self.jail.root / f"{_SNAPSHOT_PARTIAL}{final.name}"
        try:
            partial.replace(final)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            shutil.move(partial, final)
        os.chown(final, 0, self.jail.account.gid)
        final.chmod(0o640)

    def snapshot_source(self) -> Snapshot:
        if self.restore_from is None:
            raise VmmStartError("this firecracker does not restore a snapshot")
        return self.restore_from

    async def wait_api(self) -> None:
        """Until the API socket answers (firecracker without a configuration file waits for us)."""
        await self.process.wait_api_ready(time.monotonic() + self.api_timeout)
        self._started = True

    # -- teardown ------------------------------------------------------------------------------------

    async def _start_failure(self, step: str, exc: Exception) -> Exception:
        """Explain a failed step, preferring the process's own exit reason when it died. Called before
        the undos run, so a dying firecracker is still there to be reaped and asked why."""
        if isinstance(exc, FirecrackerConfigRejected) or not isinstance(exc, FirecrackerError | OSError):
            return exc  # Firecracker's own reason (already one line), or an error that names itself
        info = self.process.exit_info
        if info is None and self.process.pid is not None:
            info = await self.process.wait_at_most(_DEATH_GRACE)
        if info is not None:
            return VmmStartError(f"{step}: {info.reason}")
        return VmmStartError(f"{step}: {exc}")

    async def _terminate(self, term_seconds: float) -> ExitInfo:
        self._started = False
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        if self.process.pid is None:
            info = ExitInfo(None, None, "firecracker was never started")
        else:
            info = await self.process.terminate(term_seconds)
        self._remove_sockets()
        return info

    def remove_drives(self) -> None:
        for path in self.restored_drives:
            path.unlink(missing_ok=True)
        self.restored_drives = []

    def _remove_sockets(self) -> None:
        # Firecracker leaves its sockets behind when it dies; guest-initiated vsock connections
        # would have created "<vsock>_<port>" listeners next to the vsock socket.
        listeners = self.vm_dir.glob(f"{VSOCK_SOCKET_NAME}_*")
        for path in (self.files.api_socket, self.vsock_path, *listeners):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self.remove_jail()

    def remove_jail(self) -> None:
        """The chroot and the links to its sockets (firecracker is gone: nothing there is needed any
        more; its log and configuration are in the VM directory)."""
        if self.jail is None:
            return
        for link in (self.files.api_socket, self.vsock_path):
            if link.is_symlink():
                link.unlink(missing_ok=True)
        self.jail.remove()
