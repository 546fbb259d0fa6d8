"""A real ``clawpot-server`` process for integration tests, and the real ``clawpot`` CLI to talk to it.

Every server runs inside a network namespace the test creates (``ip netns exec``), with its own data
directory (a temp dir whose ``assets`` links to the installed assets; never the host's data dir, whose
VM directories belong to others) and listens on a unix socket in that directory. Clients (CLI
processes, gRPC stubs) reach it over the socket from outside the namespace. Cleanup never depends on
the server cooperating: deleting the namespace kills every process still inside it (the server and the
QEMU processes it started, which inherit its namespace), and with it every TAP and nftables rule.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support.netns import NetNamespace, netns_unavailable_reason
from support.vmm_audit import audit_vm_dir

from clawpot import limits
from clawpot.v1 import vm_pb2, vm_pb2_grpc
from clawpot.vmm.cgroups import VmCgroup

BIN_DIR = Path(sys.executable).parent
CLAWPOT = BIN_DIR / "clawpot"
CLAWPOT_SERVER = BIN_DIR / "clawpot-server"
SERVER_START_TIMEOUT = 60.0
CLI_TIMEOUT = 180.0


class InstalledAssets(Protocol):  # the part of tests/conftest.py's fixture value used here
    kernel: Path
    rootfs: Path


def skip_unless_servable() -> None:
    """Skip (with the reason printed) where a server with QEMU VMs in a namespace cannot run."""
    reason = netns_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    for binary in (CLAWPOT, CLAWPOT_SERVER):
        if not binary.exists():
            pytest.skip(f"{binary.name} is not installed in this environment (pip install -e .)")


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


@dataclass
class ServerProcess:
    ns: NetNamespace
    data_dir: Path
    args: Sequence[str] = ()
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    log_path: Path = field(init=False)
    socket: Path = field(init=False)

    def __post_init__(self) -> None:
        self.socket = self.data_dir.parent / "server.sock"
        self.log_path = self.data_dir.parent / "server.log"

    @property
    def url(self) -> str:
        return f"unix:{self.socket}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "server not started"
        return self.proc.pid

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self, *extra: str) -> None:
        assert self.proc is None or self.proc.poll() is not None, "server already running"
        argv = [
            str(CLAWPOT_SERVER),
            "--listen",
            self.url,
            "--data-dir",
            str(self.data_dir),
            "--vmm",
            "qemu",
            *self.args,
            *extra,
        ]
        with open(self.log_path, "ab") as log:
            log.write(f"--- start {self.starts}: {' '.join(argv)}\n".encode())
            log.flush()
            # `ip netns exec` execs a shell that mounts the cgroup hierarchies again (the VMMs' limits
            # live there; `ip netns exec` gives its command a fresh /sys without them) and execs the
            # server, so this PID is the server's own.
            command = self.ns.argv(with_cgroups(argv))
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        self.starts += 1
        try:
            wait_until(self._serving, SERVER_START_TIMEOUT, "clawpot-server to serve")
        except AssertionError:
            raise AssertionError(f"clawpot-server did not come up; log:\n{self.log_tail()}") from None

    def _serving(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(
                f"clawpot-server exited with {self.proc.returncode}; log:\n{self.log_tail()}"
            )
        return bool(self.health() == health_pb2.HealthCheckResponse.SERVING)

    def health(self, service: str = "") -> int | None:
        if not self.socket.exists():
            return None
        with grpc.insecure_channel(self.url) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=2
                )
            except grpc.RpcError:
                return None
        return int(reply.status)

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM (graceful shutdown); returns the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill9()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS in /proc status")

    # -- clients ----------------------------------------------------------------------------------

    def cli(
        self, *args: str, input: bytes | None = None, timeout: float = CLI_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        """Run the real ``clawpot`` CLI against this server (outside the namespace, over the socket)."""
        return run_cli(self.url, *args, input=input, timeout=timeout)

    def cli_ok(self, *args: str, input: bytes | None = None, timeout: float = CLI_TIMEOUT) -> str:
        result = self.cli(*args, input=input, timeout=timeout)
        assert result.returncode == 0, (
            f"clawpot {' '.join(args)} exited {result.returncode}: {result.stderr.strip()}\n"
            f"server log:\n{self.log_tail()}"
        )
        return result.stdout

    def cli_as(
        self,
        uid: int,
        url: str,
        *args: str,
        groups: Sequence[int] = (),
        env: dict[str, str] | None = None,
        timeout: float = CLI_TIMEOUT,
    ) -> subprocess.CompletedProcess[str]:
        """``clawpot --server URL ARGS`` as another user, inside the namespace (where TCP listeners are).

        The user gets ``uid`` as its group too and only ``groups`` as supplementary groups; its
        environment is ``env`` plus a PATH and HOME, nothing inherited from the test (no token).
        """
        drop = ["setpriv", f"--reuid={uid}", f"--regid={uid}"]
        drop += [f"--groups={','.join(map(str, groups))}"] if groups else ["--clear-groups"]
        proc = subprocess.run(
            self.ns.argv([*drop, str(CLAWPOT), "--server", url, *args]),
            capture_output=True,
            timeout=timeout,
            check=False,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/", "COLUMNS": "200", **(env or {})},
        )
        return subprocess.CompletedProcess(
            proc.args,
            proc.returncode,
            proc.stdout.decode(errors="replace"),
            proc.stderr.decode(errors="replace"),
        )

    def cli_popen(self, *args: str, **kwargs: Any) -> subprocess.Popen[bytes]:
        return subprocess.Popen([str(CLAWPOT), "--server", self.url, *args], **kwargs)

    @contextlib.contextmanager
    def stub(self) -> Iterator[vm_pb2_grpc.VmServiceStub]:
        with grpc.insecure_channel(self.url) as channel:
            yield vm_pb2_grpc.VmServiceStub(channel)

    def create(self, *args: str) -> str:
        """``clawpot create ARGS``; returns the new VM's id, once its VMM passed ``audit_vm_dir``
        (the session's ``VmmAuditor`` checks every other VMM too, however it was started)."""
        vm_id = self.cli_ok("create", *args).strip()
        assert re.fullmatch(r"[A-Za-z0-9_-]+", vm_id), vm_id
        # Every VMM a server starts for a test is under its layers (QEMU confined; its cgroup; the
        # jailer for firecracker): tests/support/vmm_audit.py.
        audit = audit_vm_dir(self.data_dir / "vms" / vm_id, jailed="--no-jailer" not in self.args)
        assert audit is not None, f"VM {vm_id} names no VMM process"
        return vm_id

    def vms(self) -> dict[str, vm_pb2.Vm]:
        with self.stub() as api:
            return {vm.id: vm for vm in api.ListVms(vm_pb2.ListVmsRequest(), timeout=30).vms}

    def exec(self, vm_id: str, *argv: str, timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess[str]:
        return self.cli("exec", vm_id, "--", *argv, timeout=timeout)

    # -- what exists on the host ------------------------------------------------------------------

    def vm_dirs(self) -> set[str]:
        vms = self.data_dir / "vms"
        return {p.name for p in vms.iterdir()} if vms.exists() else set()

    def vmm_pids(self) -> dict[str, int]:
        """VM id -> PID of every QEMU running in the namespace (QEMU is started with -name clawpot-<id>)."""
        found = {}
        for pid in self.ns.pids():
            with contextlib.suppress(OSError):
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                if argv and argv[0].endswith(b"qemu-system-x86_64") and b"-name" in argv:
                    name = argv[argv.index(b"-name") + 1].decode()
                    found[name.removeprefix("clawpot-")] = pid
        return found

    def db_rows(self, sql: str) -> list[tuple[Any, ...]]:
        """Read the server's SQLite store directly (WAL mode allows a reader next to the server)."""
        db = sqlite3.connect(f"file:{self.data_dir / 'state.db'}?mode=ro", uri=True, timeout=10)
        try:
            return db.execute(sql).fetchall()
        finally:
            db.close()

    def taps(self) -> set[str]:
        """Clawpot's TAPs in the namespace (named ``cp-<hex>``)."""
        return {
            link["ifname"]
            for link in self.ns.ip_json("link", "show")
            if re.fullmatch(r"cp-[0-9a-f]+", link["ifname"])
        }


@dataclass(frozen=True)
class Assets:
    kernel: Path
    rootfs: Path


def injected_assets(installed: InstalledAssets, directory: Path) -> Assets:
    """The installed kernel and a copy of the root image with this tree's agent injected: for tests of
    agent operations newer than the installed image's agent may be (helpers install theirs)."""
    from clawpot.assets.inject import inject

    (directory / "vmlinux").symlink_to(installed.kernel)
    rootfs = directory / "rootfs.ext4"
    subprocess.run(["cp", "--sparse=always", str(installed.rootfs), str(rootfs)], check=True)
    inject(rootfs)
    return Assets(directory / "vmlinux", rootfs)


def with_cgroups(argv: list[str]) -> list[str]:
    """``argv`` behind a shell that mounts the cgroup hierarchies again first (``cgroup_mounts``), then
    execs it (so its PID is the command's own): for commands run through `ip netns exec`."""
    return ["sh", "-c", f'set -e\n{cgroup_mounts()}exec "$@"', "sh", *argv]


def cgroup_mounts() -> str:
    """Shell lines mounting the host's cgroup hierarchies again, in the same places: run inside the
    private mount namespace of `ip netns exec` (which mounts a fresh sysfs on /sys), they give the
    server the same hierarchies as the host; nothing changes outside that namespace."""
    lines = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _, where, fstype, options = line.split()[:4]
        if not where.startswith("/sys/fs/cgroup"):
            continue
        if fstype == "tmpfs" and where == "/sys/fs/cgroup":
            lines.append(f"mount -t tmpfs -o mode=755 cgroup_root {where}")
        elif fstype == "cgroup2":
            lines.append(f"mkdir -p {where} && mount -t cgroup2 cgroup2 {where}")
        elif fstype == "cgroup":
            controllers = [
                o
                for o in options.split(",")
                if o not in ("rw", "ro", "relatime", "nosuid", "nodev", "noexec")
            ]
            if controllers and not any(c.startswith("name=") for c in controllers):
                lines.append(f"mkdir -p {where} && mount -t cgroup -o {','.join(controllers)} cgroup {where}")
    return "".join(f"{line}\n" for line in lines)


@contextlib.contextmanager
def server_in_namespace(
    workdir: Path, assets: InstalledAssets, *args: str, start: bool = True
) -> Iterator[ServerProcess]:
    """A server in a fresh namespace and data dir; torn down (namespace deleted) even on failure."""
    skip_unless_servable()
    data = workdir / "data"
    data.mkdir(parents=True)
    (data / "assets").symlink_to(assets.kernel.parent, target_is_directory=True)
    ns = NetNamespace.create("clawpot-srv")
    server = ServerProcess(ns, data, args)
    try:
        if start:
            server.start()
        yield server
    finally:
        try:
            server.close()
        finally:
            leftover = server.vm_dirs()
            ns.delete()  # kills the VMs still running inside; their TAPs and rules go with it
            shutil.rmtree(data / "vms", ignore_errors=True)
            for vm_id in leftover:  # and the cgroups of the VMMs it killed
                VmCgroup(vm_id).remove(attempts=limits.CGROUP_REMOVE_ATTEMPTS)


def run_cli(
    url: str, *args: str, input: bytes | None = None, timeout: float = CLI_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(CLAWPOT), "--server", url, *args], input=input, capture_output=True, timeout=timeout, check=False
    )
    return subprocess.CompletedProcess(
        proc.args, proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")
    )


def parse_table(text: str) -> list[dict[str, str]]:
    """``clawpot list`` output as rows keyed by the header's column names."""
    lines = [line for line in text.splitlines() if line.strip()]
    header = lines[0].split()
    return [dict(zip(header, line.split(), strict=True)) for line in lines[1:]]


def code_of(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    """Run a gRPC call that must fail; return its status code and message."""
    try:
        call()
    except grpc.RpcError as exc:
        assert isinstance(exc, grpc.Call)
        return exc.code(), exc.details() or ""
    raise AssertionError("the call succeeded but should have failed")


def proc_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes (its parent, the killed server, is gone; init reaps it).
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True
