"""`clawpot-driver`: run ONE VM in the foreground, without the server.

    clawpot-driver start [--kernel PATH] [--rootfs PATH] [--vcpus 1] [--memory 256]
                         [--socket /tmp/firecracker.sock] [--vmm auto|firecracker|qemu]
    clawpot-driver status [--socket PATH] [--json]
    clawpot-driver stop [--socket PATH]

``start`` runs until Ctrl+C or SIGTERM, then stops the VM and removes everything it created. ``status``
and ``stop`` find the VM by its control socket; ``stop`` asks the driver that owns the VM to stop it, so
the clean-up always happens in one place.

Exit codes: 0 success, 1 the VM failed (or there is no VM), 2 bad usage.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

import click

from clawpot import __version__, limits, paths
from clawpot.cli.terminal import safe
from clawpot.vm import procfs
from clawpot.vm.config import DEFAULT_READY_TIMEOUT, VmConfig
from clawpot.vm.directory import VmDirectory, VmMetadata, find_by_control_socket
from clawpot.vm.errors import VmError, VmStartAborted
from clawpot.vm.handle import DEFAULT_STOP_GRACE, Vm
from clawpot.vm.sockets import SocketStatus, probe_socket, socket_owners
from clawpot.vm.state import VmState
from clawpot.vm.validation import problems
from clawpot.vmm.base import VmmError
from clawpot.vmm.firecracker.jail import NO_JAILER_WARNING
from clawpot.vmm.registry import BackendOptions, VmmChoice, get_backend, resolve
from clawpot.vmm.spec import BackendKind

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
DEFAULT_SOCKET = Path("/tmp/firecracker.sock")
# How long `stop` waits for the owning driver to finish its clean-up.
STOP_WAIT = 30.0

log = logging.getLogger("clawpot.driver")


class DriverExit(Exception):
    """Ends a command with one line on stderr and an exit code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _say(message: str) -> None:
    # Messages can carry guest text (a VM error quotes the serial console's tail): escape it.
    click.echo(f"clawpot-driver: {safe(message, multiline=True)}", err=True)


def _finish(code: int, message: str | None = None) -> NoReturn:
    if message:
        _say(message)
    sys.exit(code)


def _run(coro: Any) -> NoReturn:
    try:
        code = asyncio.run(coro)
    except DriverExit as exc:
        _finish(exc.code, str(exc))
    _finish(code)


@dataclass(frozen=True)
class _Context:
    data_dir: Path

    @property
    def vms_dir(self) -> Path:
        return paths.vms_dir(self.data_dir)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="clawpot-driver")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help=f"Assets and VM directories (env ${paths.DATA_DIR_ENV}, default {paths.DEFAULT_DATA_DIR}).",
)
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.pass_context
def cli(ctx: click.Context, data_dir: Path | None, verbose: bool) -> None:
    """Run one microVM in the foreground (Firecracker, or QEMU microvm).

    Exit codes: 0 success, 1 the VM failed, 2 bad usage.
    """
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="clawpot-driver: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("clawpot").setLevel(logging.DEBUG if verbose else logging.INFO)
    ctx.obj = _Context(paths.data_dir(data_dir))


_socket_option = click.option(
    "--socket",
    "socket_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=DEFAULT_SOCKET,
    show_default=True,
    help="The VMM's control socket (Firecracker API socket).",
)


# -- start -------------------------------------------------------------------------------------------


@cli.command()
@click.option(
    "--kernel", type=click.Path(path_type=Path), default=None, help="Guest vmlinux [installed asset]."
)
@click.option(
    "--rootfs",
    type=click.Path(path_type=Path),
    default=None,
    help="Root filesystem (ext4) [installed asset].",
)
@click.option(
    "--vcpus",
    type=int,
    default=limits.DEFAULT_VCPUS,
    show_default=True,
    help=f"Virtual CPUs ({limits.MIN_VCPUS}-{limits.MAX_VCPUS}).",
)
@click.option(
    "--memory",
    "memory_mib",
    type=int,
    default=limits.DEFAULT_MEMORY_MIB,
    show_default=True,
    help="Guest memory in MiB.",
)
@_socket_option
@click.option(
    "--vmm",
    type=click.Choice([c.value for c in VmmChoice]),
    default=VmmChoice.AUTO.value,
    show_default=True,
    help="auto: Firecracker where this host's KVM boots guests, else QEMU.",
)
@click.option(
    "--firecracker",
    "firecracker_bin",
    type=click.Path(path_type=Path),
    default=None,
    help="Firecracker binary [installed asset, then PATH].",
)
@click.option("--qemu", "qemu_bin", type=click.Path(path_type=Path), default=None,
              help="qemu-system-x86_64 binary [PATH].")  # fmt: skip
@click.option("--boot-args", default=None, help="Replace the whole kernel command line.")
@click.option(
    "--writable-layer/--no-writable-layer",
    default=True,
    show_default=True,
    help="Keep the rootfs read-only and give the guest a per-VM disk for its writes.",
)
@click.option(
    "--disk",
    "disk_mib",
    type=int,
    default=limits.DEFAULT_DISK_MIB,
    show_default=True,
    help=f"Its size in MiB ({limits.MIN_DISK_MIB}-{limits.MAX_DISK_MIB}); past it the guest gets ENOSPC.",
)
@click.option(
    "--wait-ready/--no-wait-ready",
    default=False,
    show_default=True,
    help="Report Running only once the guest agent answers (off: once the guest CPU runs).",
)
@click.option("--ready-timeout", type=float, default=DEFAULT_READY_TIMEOUT, show_default=True)
@click.option("--stop-grace", type=float, default=DEFAULT_STOP_GRACE, show_default=True,
              help="Seconds between the shutdown request and SIGTERM.")  # fmt: skip
@click.option("--console", is_flag=True, help="Copy the guest's serial console to stdout.")
@click.option("--no-jailer", is_flag=True,
              help="Development only: Firecracker without its jailer (as root, not chrooted).")  # fmt: skip
@click.pass_obj
def start(
    ctx: _Context,
    kernel: Path | None,
    rootfs: Path | None,
    vcpus: int,
    memory_mib: int,
    socket_path: Path,
    vmm: str,
    firecracker_bin: Path | None,
    qemu_bin: Path | None,
    boot_args: str | None,
    writable_layer: bool,
    disk_mib: int,
    wait_ready: bool,
    ready_timeout: float,
    stop_grace: float,
    console: bool,
    no_jailer: bool,
) -> None:
    """Start a VM and keep it running until Ctrl+C or SIGTERM; then stop it and clean up."""
    assets = paths.assets_dir(ctx.data_dir)
    config = VmConfig(
        kernel=(kernel or assets / "vmlinux").absolute(),
        rootfs=(rootfs or assets / "rootfs.ext4").absolute(),
        vcpus=vcpus,
        memory_mib=memory_mib,
        boot_args=boot_args,
        writable_layer=writable_layer,
        scratch_mib=disk_mib,
        wait_ready=wait_ready,
        ready_timeout=ready_timeout,
    )
    socket_path = socket_path.absolute()
    try:
        kind = resolve(vmm, ctx.data_dir)
        binary = firecracker_bin if kind is BackendKind.FIRECRACKER else qemu_bin
        options = BackendOptions(
            binary=binary, control_socket=socket_path, data_dir=ctx.data_dir, use_jailer=not no_jailer
        )
        backend = get_backend(kind.value, options)
        if no_jailer and kind is BackendKind.FIRECRACKER:
            click.echo(NO_JAILER_WARNING.format(program="clawpot-driver"), err=True)
    except VmmError as exc:
        _finish(EXIT_USAGE, str(exc))
    found = problems(
        config, vms_root=ctx.vms_dir, control_socket=socket_path, capabilities=backend.capabilities()
    )
    if found:
        for line in found:
            _say(line)
        _finish(EXIT_USAGE)
    _claim_socket(socket_path, ctx.vms_dir)
    vm = Vm(config, backend, root=ctx.vms_dir, stop_grace=stop_grace)
    _run(_foreground(vm, socket_path, console))


def _claim_socket(socket_path: Path, vms_dir: Path) -> None:
    """Refuse a socket in use; remove a stale one (and the dead VM's directory), telling the user."""
    status = probe_socket(socket_path)
    if status is SocketStatus.LIVE:
        _finish(EXIT_USAGE, f"socket {socket_path} is in use by {_describe_owner(socket_path)}")
    if status is SocketStatus.NOT_A_SOCKET:
        _finish(EXIT_USAGE, f"{socket_path} exists and is not a socket; refusing to replace it")
    if status is SocketStatus.STALE:
        socket_path.unlink(missing_ok=True)
        _say(f"removed stale socket {socket_path} (no process was listening on it)")
    leftover = find_by_control_socket(socket_path, vms_dir)
    if leftover is not None:
        meta = leftover.read_metadata()
        if meta is not None and not procfs.is_alive(meta.owner_pid, meta.owner_start_ticks):
            leftover.remove()
            _say(f"removed the directory of dead VM {leftover.id} ({leftover.path})")


def _describe_owner(socket_path: Path) -> str:
    owners = socket_owners(socket_path)
    if not owners:
        return "another process"
    return ", ".join(f"{procfs.command_name(pid) or 'process'} (pid {pid})" for pid in owners)


async def _foreground(vm: Vm, socket_path: Path, console: bool) -> int:
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def on_signal(signum: int) -> None:
        if not stop_requested.is_set():
            _say(f"{signal.Signals(signum).name}: stopping the VM")
        stop_requested.set()

    for signum in signals:
        loop.add_signal_handler(signum, on_signal, signum)
    copy: _ConsoleCopy | None = None
    try:
        boot = asyncio.create_task(vm.start())
        interrupted = asyncio.create_task(stop_requested.wait())
        await asyncio.wait({boot, interrupted}, return_when=asyncio.FIRST_COMPLETED)
        if not boot.done():
            await vm.stop()
            with contextlib.suppress(VmError):
                await boot
            _say(f"VM {vm.id} stopped before it finished starting")
            return EXIT_OK
        interrupted.cancel()
        try:
            boot.result()
        except VmStartAborted:
            return EXIT_OK
        except VmError as exc:
            _say(f"VM {vm.id} failed to start: {exc}")
            return EXIT_FAILED
        if console and vm.serial_log is not None:
            copy = _ConsoleCopy(vm.serial_log)
        pid = vm.vmm.pid if vm.vmm else None
        _say(
            f"VM {vm.id} running: {vm.backend.kind} pid {pid}, socket {socket_path},"
            f" serial console {vm.serial_log}. Ctrl+C to stop."
        )
        failed = asyncio.create_task(vm.wait_for(VmState.ERROR))
        interrupted = asyncio.create_task(stop_requested.wait())
        await asyncio.wait({failed, interrupted}, return_when=asyncio.FIRST_COMPLETED)
        failed.cancel()
        interrupted.cancel()
        if copy is not None:
            copy.finish()  # the last output often explains a failure; the file goes with the VM
        code = EXIT_OK
        if vm.state is VmState.ERROR:
            _say(f"VM {vm.id} failed: {vm.reason}")
            code = EXIT_FAILED
        await vm.stop()
        _say(f"VM {vm.id} stopped; socket and VM directory removed")
        return code
    finally:
        if copy is not None:
            copy.finish()
        # Whatever happened above, nothing may outlive the driver.
        await vm.stop(grace=0)
        for signum in signals:
            loop.remove_signal_handler(signum)


class _ConsoleCopy:
    """Copies the guest's serial console to stdout as the file grows.

    The file is capped and rotated (``clawpot.vmm.console``): when the path names a new file, the rest
    of the old one is copied first, then the new one from its start.
    """

    def __init__(self, serial_log: Path) -> None:
        self.serial_log = serial_log
        self._file: BinaryIO | None = None
        self.task = asyncio.create_task(self._run())

    def _copy_open(self) -> bool:
        assert self._file is not None
        # Bounded reads: at most one chunk in memory however fast the guest prints.
        chunk = self._file.read(limits.CONSOLE_READ_CHUNK)
        if chunk:
            sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()
        return bool(chunk)

    def copy_new(self) -> bool:
        if self._file is not None and self._copy_open():
            return True
        try:
            current = os.stat(self.serial_log)
        except OSError:
            return False
        if self._file is not None and os.fstat(self._file.fileno()).st_ino == current.st_ino:
            return False  # same file, nothing new
        # First call, or the file was rotated and the old one is read to its end: follow the new one.
        if self._file is not None:
            self._file.close()
        try:
            self._file = open(self.serial_log, "rb")  # noqa: SIM115 - held across calls, closed in finish
        except OSError:
            self._file = None
            return False
        return self._copy_open()

    async def _run(self) -> None:
        # A growing regular file offers nothing to wait on (poll/epoll say "readable" forever): poll it.
        while True:  # noqa: ASYNC110
            await asyncio.sleep(0 if self.copy_new() else 0.1)

    def finish(self) -> None:
        self.task.cancel()
        while self.copy_new():
            pass
        if self._file is not None:
            self._file.close()
            self._file = None


# -- status ------------------------------------------------------------------------------------------


@cli.command()
@_socket_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def status(ctx: _Context, socket_path: Path, as_json: bool) -> None:
    """Show the VM's state, vCPUs, memory, uptime and VMM version."""
    try:
        code = _status(ctx, socket_path.absolute(), as_json)
    except DriverExit as exc:
        _finish(exc.code, str(exc))
    _finish(code)


def _status(ctx: _Context, socket_path: Path, as_json: bool) -> int:
    directory = find_by_control_socket(socket_path, ctx.vms_dir)
    meta = directory.read_metadata() if directory else None
    sock = probe_socket(socket_path)
    info: dict[str, Any] = {"socket": str(socket_path), "socket_status": str(sock)}
    if meta is not None:
        info |= {
            "id": meta.id,
            "backend": meta.backend,
            "state": meta.state,
            "reason": meta.reason,
            "vcpus": meta.vcpus,
            "memory_mib": meta.memory_mib,
            "vmm_pid": meta.vmm_pid,
            "driver_pid": meta.owner_pid,
            "serial_log": meta.serial_log,
        }
        if meta.started_at is not None:
            info["uptime_s"] = round(time.time() - meta.started_at, 1)
    if sock is SocketStatus.LIVE and meta is not None and meta.backend == BackendKind.QEMU:
        from clawpot.vmm.qemu.facts import qemu_facts

        info |= asyncio.run(qemu_facts(socket_path, data=ctx.data_dir))
    elif sock is SocketStatus.LIVE:
        info |= asyncio.run(_firecracker_facts(socket_path))
        info.setdefault("backend", str(BackendKind.FIRECRACKER))
        info.setdefault("state", info.get("vmm_state", "unknown"))
        if "uptime_s" not in info:
            owners = socket_owners(socket_path)
            uptime = procfs.uptime_of(owners[0]) if owners else None
            if uptime is not None:
                info["uptime_s"] = round(uptime, 1)
    code = EXIT_OK if sock is SocketStatus.LIVE and info.get("state") != str(VmState.ERROR) else EXIT_FAILED
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return code
    if sock is SocketStatus.ABSENT and meta is None:
        raise DriverExit(EXIT_FAILED, f"no VM at {socket_path}")
    if sock is SocketStatus.STALE and meta is None:
        raise DriverExit(EXIT_FAILED, f"stale socket {socket_path}: no VMM is listening on it")
    _print_status(info)
    return code


async def _firecracker_facts(socket_path: Path) -> dict[str, Any]:
    from clawpot.vmm.firecracker.client import FirecrackerClient
    from clawpot.vmm.firecracker.errors import FirecrackerError

    async with FirecrackerClient(socket_path, timeout=5.0) as client:
        try:
            instance = await client.instance_info()
            machine = await client.machine_config()
            version = await client.version()
        except FirecrackerError as exc:
            return {"vmm_error": str(exc)}
    return {
        "vmm_state": str(instance.state),
        "vcpus": machine.vcpu_count,
        "memory_mib": machine.mem_size_mib,
        "vmm_version": f"firecracker {version.firecracker_version}",
    }


def _print_status(info: dict[str, Any]) -> None:
    state = str(info.get("state", "unknown"))
    if "vmm_state" in info:
        state += f" ({info.get('backend', 'vmm')}: {info['vmm_state']})"
    if info.get("reason") and info.get("state") == str(VmState.ERROR):
        state += f": {info['reason']}"
    rows = [
        ("socket", f"{info['socket']} ({info['socket_status']})"),
        ("vm", f"{info['id']} (driver pid {info['driver_pid']})" if "id" in info else None),
        ("state", state),
        ("vcpus", info.get("vcpus")),
        ("memory", f"{info['memory_mib']} MiB" if "memory_mib" in info else None),
        ("uptime", _format_uptime(info["uptime_s"]) if "uptime_s" in info else None),
        ("vmm", info.get("vmm_version") or info.get("backend")),
        ("accelerator", info.get("accelerator")),
        ("vmm pid", info.get("vmm_pid")),
        ("serial log", info.get("serial_log")),
        ("vmm error", info.get("vmm_error")),
    ]
    for name, value in rows:
        if value is not None:
            click.echo(f"{name + ':':<13}{safe(str(value))}")  # reasons can quote the guest


def _format_uptime(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


# -- stop --------------------------------------------------------------------------------------------


@cli.command()
@_socket_option
@click.option("--grace", type=float, default=DEFAULT_STOP_GRACE, show_default=True,
              help="For a VMM no driver owns: seconds between Ctrl+Alt+Del and SIGTERM.")  # fmt: skip
@click.pass_obj
def stop(ctx: _Context, socket_path: Path, grace: float) -> None:
    """Stop the VM behind the socket (its driver cleans up) and wait until it is gone."""
    try:
        code = _stop(ctx, socket_path.absolute(), grace)
    except DriverExit as exc:
        _finish(exc.code, str(exc))
    _finish(code)


def _stop(ctx: _Context, socket_path: Path, grace: float) -> int:
    directory = find_by_control_socket(socket_path, ctx.vms_dir)
    meta = directory.read_metadata() if directory else None
    if directory is not None and meta is not None and procfs.is_alive(meta.owner_pid, meta.owner_start_ticks):
        return _stop_driver(directory, meta)
    sock = probe_socket(socket_path)
    if sock is SocketStatus.LIVE:
        return _stop_unowned(socket_path, grace)
    if directory is not None:
        directory.remove()
        _say(f"removed the directory of dead VM {directory.id} ({directory.path})")
    if sock is SocketStatus.STALE:
        socket_path.unlink(missing_ok=True)
        _say(f"removed stale socket {socket_path}; no VM was running")
        return EXIT_OK
    if sock is SocketStatus.NOT_A_SOCKET:
        raise DriverExit(EXIT_USAGE, f"{socket_path} is not a socket")
    if directory is not None:
        return EXIT_OK
    raise DriverExit(EXIT_FAILED, f"no VM at {socket_path}")


def _stop_driver(directory: VmDirectory, meta: VmMetadata) -> int:
    """The VM belongs to a running `clawpot-driver start`: ask it to stop and wait for its clean-up."""
    os.kill(meta.owner_pid, signal.SIGTERM)
    if _wait_gone([meta.owner_pid], {meta.owner_pid: meta.owner_start_ticks}, STOP_WAIT):
        directory.remove()  # normally gone already: the driver removes it before exiting
        _say(f"VM {meta.id} stopped")
        return EXIT_OK
    raise DriverExit(
        EXIT_FAILED, f"VM {meta.id} (driver pid {meta.owner_pid}) still running after {STOP_WAIT:g}s"
    )


def _stop_unowned(socket_path: Path, grace: float) -> int:
    """A firecracker no driver owns (started by hand): Ctrl+Alt+Del, grace, SIGTERM, SIGKILL."""
    owners = [pid for pid in socket_owners(socket_path) if procfs.command_name(pid) == "firecracker"]
    if not owners:
        raise DriverExit(
            EXIT_FAILED, f"socket {socket_path} is in use by {_describe_owner(socket_path)}, not firecracker"
        )
    ticks = {pid: procfs.start_ticks(pid) for pid in owners}
    asyncio.run(_ctrl_alt_del(socket_path))
    for signum, seconds in ((None, grace), (signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0)):
        alive = [pid for pid in owners if procfs.is_alive(pid, ticks[pid])]
        if signum is not None:
            for pid in alive:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signum)
        if _wait_gone(alive, ticks, seconds):
            break
    pids = ", ".join(map(str, owners))
    if any(procfs.is_alive(pid, ticks[pid]) for pid in owners):
        raise DriverExit(EXIT_FAILED, f"firecracker (pid {pids}) did not exit")
    socket_path.unlink(missing_ok=True)
    _say(f"stopped firecracker (pid {pids}) and removed {socket_path}")
    return EXIT_OK


async def _ctrl_alt_del(socket_path: Path) -> None:
    from clawpot.vmm.firecracker.client import FirecrackerClient
    from clawpot.vmm.firecracker.errors import FirecrackerError

    async with FirecrackerClient(socket_path, timeout=5.0) as client:
        with contextlib.suppress(FirecrackerError):
            await client.send_ctrl_alt_del()


def _wait_gone(pids: list[int], ticks: dict[int, int | None], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while any(procfs.is_alive(pid, ticks[pid]) for pid in pids):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def main() -> None:
    cli()
