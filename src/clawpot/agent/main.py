"""Command line and lifecycle of the agent process: start listeners, print READY, serve, stop.

In the guest the init starts ``python3 -m clawpot_agent --guest`` under tini; with no listener option the
agent serves AF_VSOCK port 10051 and the virtio-serial port named SERIAL_PORT_NAME, whichever exist.
On a host (tests, benchmarks) it serves ``--listen-unix`` sockets and inherited descriptors instead.
SIGTERM/SIGINT and the ``shutdown`` operation stop the agent; with ``--guest`` they power the VM off.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import os
import signal
import socket
import stat
import sys
from pathlib import Path

from .configure import Machine
from .connection import AgentContext
from .links import SerialLink, SocketLink
from .ops import OPS
from .power import may_power_off, power_off
from .protocol import AGENT_VSOCK_PORT, READY_LINE, SERIAL_PORT_NAME
from .reaper import Reaper

log = logging.getLogger(__name__)

_VIRTIO_PORTS = Path("/sys/class/virtio-ports")
_TERM_GRACE = 2.0


def _port(text: str) -> int:
    port = int(text)
    if not 0 < port < 0xFFFFFFFF:
        raise argparse.ArgumentTypeError(f"vsock port out of range: {text}")
    return port


def _fd(text: str) -> int:
    fd = int(text)
    if fd < 3:
        raise argparse.ArgumentTypeError(f"not an inherited descriptor: {text}")
    return fd


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="clawpot-agent", description="Clawpot guest agent.")
    p.add_argument(
        "--guest",
        action="store_true",
        help="running as the guest's agent under init: stopping powers the VM off",
    )
    p.add_argument(
        "--vsock-port",
        type=_port,
        metavar="PORT",
        help=f"listen on AF_VSOCK PORT (default {AGENT_VSOCK_PORT} when no listener is given)",
    )
    p.add_argument(
        "--serial",
        metavar="auto|PATH",
        help="serve a virtio-serial port; auto: find the port named " + SERIAL_PORT_NAME,
    )
    p.add_argument(
        "--listen-unix", action="append", default=[], metavar="PATH", help="listen on a unix socket"
    )
    p.add_argument(
        "--fd",
        action="append",
        type=_fd,
        default=[],
        metavar="N",
        help="serve an inherited connected stream socket",
    )
    p.add_argument(
        "--serial-fd",
        action="append",
        type=_fd,
        default=[],
        metavar="N",
        help="serve an inherited stream like a serial line (host sessions resynchronise)",
    )
    p.add_argument(
        "--configure-sandbox",
        metavar="ETC_DIR",
        help="tests only: allow the configure operation on a host agent that runs in its own user, network "
        "and UTS namespaces (refused otherwise); hostname, hosts and resolv.conf go to ETC_DIR",
    )
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p.parse_args(argv)


def find_serial_port(name: str = SERIAL_PORT_NAME, sysfs: Path = _VIRTIO_PORTS) -> Path | None:
    """The /dev node of the virtio-serial port called ``name`` (no udev in the guest: ask sysfs)."""
    with contextlib.suppress(OSError):
        for entry in sorted(sysfs.iterdir()):
            with contextlib.suppress(OSError):
                if (entry / "name").read_text().strip() == name:
                    return Path("/dev") / entry.name
    return None


def in_initial_user_namespace(uid_map: Path = Path("/proc/self/uid_map")) -> bool:
    """True in the host's own user namespace, whose uid map is the identity over every uid."""
    try:
        return uid_map.read_text().split() == ["0", "0", "4294967295"]
    except OSError:
        return True  # cannot tell: assume the worst


def configure_etc(opts: argparse.Namespace) -> Path | None:
    """Where ``configure`` may write /etc files, or None when it must not change this machine at all.

    A capability inside a child user namespace gives no power over namespaces the host's user namespace
    owns, so a sandboxed agent can only rename and readdress the namespaces created with it.
    """
    if opts.guest and may_power_off(True):
        return Path("/etc")
    if opts.configure_sandbox:
        if in_initial_user_namespace():
            raise OSError("--configure-sandbox needs the agent to run in its own user namespace")
        return Path(opts.configure_sandbox)
    return None


class Agent:
    def __init__(self, opts: argparse.Namespace, loop: asyncio.AbstractEventLoop) -> None:
        self.opts = opts
        self.loop = loop
        self.reaper = Reaper(loop)
        self.ctx = AgentContext(
            loop=loop, reaper=self.reaper, guest=opts.guest, request_shutdown=self.request_stop, ops=OPS
        )
        self._servers: list[asyncio.Server] = []
        self._links: set[SocketLink | SerialLink] = set()
        self._unix_paths: list[Path] = []
        self._stop: asyncio.Future[str] = loop.create_future()
        self._accepted = 0

    # --- listeners -------------------------------------------------------------------------------------

    def _socket_link(self, kind: str) -> SocketLink:
        self._accepted += 1
        link = SocketLink(self.ctx, f"{kind}#{self._accepted}", self._link_closed)
        self._links.add(link)
        return link

    def _link_closed(self, link: SocketLink | SerialLink) -> None:
        self._links.discard(link)
        if not self._servers and not self._links:
            self.request_stop("every channel is closed")

    async def start_listeners(self) -> list[str]:
        o = self.opts
        explicit = bool(o.vsock_port or o.serial or o.listen_unix or o.fd or o.serial_fd)
        started: list[str] = []
        vsock_port = o.vsock_port or (None if explicit else AGENT_VSOCK_PORT)
        if vsock_port:
            try:
                started.append(await self._listen_vsock(vsock_port))
            except OSError as exc:
                if explicit:
                    raise
                log.warning("vsock port %d unavailable: %s", vsock_port, exc)
        serial = o.serial or (None if explicit else "auto")
        if serial:
            path = find_serial_port() if serial == "auto" else Path(serial)
            if path is None:
                log.info("no virtio-serial port named %s", SERIAL_PORT_NAME)
            else:
                try:
                    fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
                except OSError as exc:
                    if explicit:
                        raise
                    log.warning("cannot open %s: %s", path, exc)
                else:
                    self._links.add(
                        SerialLink(self.ctx, fd, f"serial:{path}", device=True, on_closed=self._link_closed)
                    )
                    started.append(f"serial:{path}")
        for raw in o.listen_unix:
            started.append(await self._listen_unix(Path(raw)))
        for fd in o.fd:
            sock = socket.socket(fileno=fd)
            await self.loop.connect_accepted_socket(functools.partial(self._socket_link, f"fd{fd}"), sock)
            started.append(f"fd:{fd}")
        for fd in o.serial_fd:
            os.set_inheritable(fd, False)
            link = SerialLink(self.ctx, fd, f"serial-fd{fd}", device=False, on_closed=self._link_closed)
            self._links.add(link)
            started.append(f"serial-fd:{fd}")
        return started

    async def _listen_vsock(self, port: int) -> str:
        sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
        try:
            sock.bind((socket.VMADDR_CID_ANY, port))
            sock.listen(64)
        except OSError:
            sock.close()
            raise
        self._servers.append(await self.loop.create_server(lambda: self._socket_link("vsock"), sock=sock))
        return f"vsock:{port}"

    async def _listen_unix(self, path: Path) -> str:
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISSOCK(os.stat(path).st_mode):
                raise OSError(f"{path} exists and is not a socket")
        self._servers.append(await self.loop.create_unix_server(lambda: self._socket_link("unix"), str(path)))
        self._unix_paths.append(path)
        return f"unix:{path}"

    # --- lifecycle -------------------------------------------------------------------------------------

    def request_stop(self, reason: str) -> None:
        if not self._stop.done():
            self._stop.set_result(reason)

    async def run(self) -> int:
        try:
            etc = configure_etc(self.opts)
            self.ctx.configure_target = Machine(etc) if etc is not None else None
            started = await self.start_listeners()
        except OSError as exc:
            log.error("cannot start: %s", exc)
            await self.stop()
            return 2
        if not started:
            log.error("no channel to serve (no vsock, no virtio-serial port named %s)", SERIAL_PORT_NAME)
            await self.stop()
            return 2
        for signo in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(signo, self.request_stop, f"signal {signal.Signals(signo).name}")
        print(READY_LINE, " ".join(started), flush=True)
        log.info("ready: %s", ", ".join(started))
        reason = await self._stop
        log.info("stopping: %s", reason)
        await self.stop()
        if self.opts.guest:
            power_off(self.opts.guest)
        return 0

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
        self._servers.clear()
        await self._terminate_children()
        for link in list(self._links):
            link.close()
        self._links.clear()
        for path in self._unix_paths:
            with contextlib.suppress(OSError):
                path.unlink()
        await asyncio.sleep(0)  # let closing transports run their connection_lost
        self.reaper.close()

    async def _terminate_children(self) -> None:
        """SIGTERM every process group we started, SIGKILL what is left after a grace period."""
        pids = self.reaper.live
        for signo in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signo)
            for _ in range(int(_TERM_GRACE / 0.05)):
                self.reaper.reap()
                if not self.reaper.live:
                    return
                await asyncio.sleep(0.05)
            pids = self.reaper.live


def main(argv: list[str] | None = None) -> None:
    opts = parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr, level=opts.log_level, format="clawpot-agent %(levelname)s %(name)s: %(message)s"
    )
    if opts.guest and not may_power_off(True):
        log.warning("--guest given but not running under the guest's init: stopping will not power off")
    sys.exit(asyncio.run(_run(opts)))


async def _run(opts: argparse.Namespace) -> int:
    return await Agent(opts, asyncio.get_running_loop()).run()
