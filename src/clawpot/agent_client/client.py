"""``AgentClient``: exec, files, configure, ping, shutdown over one connection; ``connect``, ``wait_ready``.

One client per VM: many operations run concurrently over its single connection. A serial-port endpoint
serves exactly one host connection at a time, so never open a second client to the same serial socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from clawpot import limits
from clawpot.agent.protocol import FrameType
from clawpot.agent_client import files, fs, identity, procs
from clawpot.agent_client.connection import (
    RECEIVE_WINDOW,
    AgentConnection,
    AgentInfo,
    RunState,
    guest_int,
    guest_json,
)
from clawpot.agent_client.endpoints import AgentEndpoint, HybridVsockEndpoint, SerialSocketEndpoint, describe
from clawpot.agent_client.errors import AgentDisconnected, AgentUnreachable, GuestError, ProtocolError
from clawpot.agent_client.process import ExecProcess, ExecResult, Exited
from clawpot.agent_client.transport import hybrid_vsock_connect, open_stream

log = logging.getLogger(__name__)

DEFAULT_ATTEMPT_TIMEOUT = 2.0


@dataclass(frozen=True)
class PtySize:
    rows: int = 24
    cols: int = 80


class AgentClient:
    def __init__(self, conn: AgentConnection, endpoint: AgentEndpoint | None = None) -> None:
        self._conn = conn
        self.endpoint = endpoint

    @classmethod
    async def from_streams(
        cls,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        name: str = "stream",
        handshake_timeout: float = 10.0,
        resync: bool = False,
    ) -> AgentClient:
        """Talk to an agent over any byte stream (the handshake must finish within the timeout).

        ``resync=True`` for a serial line that earlier connections used (it may carry their leftovers).
        """
        try:
            async with asyncio.timeout(handshake_timeout):
                conn = await AgentConnection.open(reader, writer, name, resync=resync)
        except BaseException:
            writer.close()
            raise
        return cls(conn)

    @property
    def info(self) -> AgentInfo:
        return self._conn.info

    @property
    def name(self) -> str:
        return self._conn.name

    @property
    def connected(self) -> bool:
        return self._conn.state is RunState.RUNNING

    @property
    def violation(self) -> str | None:
        """Why the connection was dropped because of the guest's behaviour (it broke a bound of the
        channel: flooded, did not read, overran its credit); None while connected or after an ordinary
        disconnect. The server marks such a VM degraded."""
        return self._conn.violation

    async def ping(self) -> float:
        """Round-trip time to the agent in seconds."""
        return await self._conn.ping()

    # --- exec ------------------------------------------------------------------------------------------

    async def exec(
        self,
        argv: Sequence[str] | str,
        *,
        shell: bool = False,
        env: Mapping[str, str] | None = None,
        clear_env: bool = False,
        cwd: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - enforced by the agent on the remote process
        pty: PtySize | bool | None = None,
        stdin: bool = True,
        window: int = RECEIVE_WINDOW,
    ) -> ExecProcess:
        """Start a process; returns once it runs (RemoteError ``spawn_failed`` if it cannot start).

        ``argv`` runs without a shell unless ``shell=True``, which takes one command string for /bin/sh.
        ``timeout`` is enforced by the agent: it kills the whole process group. With ``pty`` stdout and
        stderr arrive merged as stdout.
        """
        request: dict[str, Any] = {"op": "exec", "stdin": stdin, "clear_env": clear_env}
        if shell:
            if not isinstance(argv, str):
                raise TypeError("shell=True takes the command as one string")
            request["command"] = argv
        else:
            if isinstance(argv, str):
                raise TypeError("argv must be a sequence of strings (or pass shell=True)")
            request["argv"] = list(argv)
        if env:
            request["env"] = dict(env)
        if cwd is not None:
            request["cwd"] = cwd
        if timeout is not None:
            request["timeout"] = timeout
        if pty:
            size = pty if isinstance(pty, PtySize) else PtySize()
            request["pty"] = {"rows": size.rows, "cols": size.cols}
        stream = self._conn.open_stream(request, window)
        try:
            info = guest_json(await stream.recv_until(FrameType.INFO), "exec info")
            pid = guest_int(info, "pid", 0, 2**31 - 1, "exec info")
        except BaseException:
            stream.close()
            raise
        return ExecProcess(stream, pid, bool(pty))

    async def run(
        self,
        argv: Sequence[str] | str,
        *,
        input: bytes | None = None,
        shell: bool = False,
        env: Mapping[str, str] | None = None,
        clear_env: bool = False,
        cwd: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - enforced by the agent on the remote process
        pty: PtySize | bool | None = None,
    ) -> ExecResult:
        """Run to completion and collect the output. Without ``input`` stdin is /dev/null."""
        proc = await self.exec(
            argv,
            shell=shell,
            env=env,
            clear_env=clear_env,
            cwd=cwd,
            timeout=timeout,
            pty=pty,
            stdin=input is not None,
        )
        async with proc:
            feeder = asyncio.create_task(self._feed(proc, input)) if input is not None else None
            out, err = bytearray(), bytearray()
            try:
                async for event in proc:
                    if isinstance(event, Exited):
                        break
                    (err if event.stream == "stderr" else out).extend(event.data)
            finally:
                if feeder is not None:
                    if not feeder.done():
                        feeder.cancel()
                    with contextlib.suppress(asyncio.CancelledError, GuestError):
                        await feeder
        assert proc.status is not None
        return ExecResult(proc.status, bytes(out), bytes(err))

    @staticmethod
    async def _feed(proc: ExecProcess, data: bytes) -> None:
        # A process may exit without reading its input: the stream then ends under us, which is fine.
        with contextlib.suppress(GuestError):
            await proc.write(data)
            await proc.close_stdin()

    # --- managed processes (they outlive the call that started them; agent_client.procs) ----------------

    async def proc_start(self, spec: procs.ProcSpec) -> ExecProcess:
        """Start a managed process; closing the returned process detaches from it (it runs on)."""
        return await procs.start(self._conn, spec)

    async def proc_attach(self, selector: procs.Selector) -> ExecProcess:
        """Listen to a managed process again (RemoteError ``not_found`` if there is none)."""
        return await procs.attach(self._conn, selector)

    async def proc_list(self) -> list[procs.ProcInfo]:
        return await procs.list_processes(self._conn)

    async def proc_input(
        self, selector: procs.Selector, data: bytes | AsyncIterator[bytes], *, close: bool = False
    ) -> None:
        await procs.send_input(self._conn, selector, data, close=close)

    async def proc_close_stdin(self, selector: procs.Selector) -> None:
        await procs.close_stdin(self._conn, selector)

    async def proc_signal(self, selector: procs.Selector, signo: int) -> None:
        await procs.send_signal(self._conn, selector, signo)

    async def proc_resize(self, selector: procs.Selector, rows: int, cols: int) -> None:
        await procs.resize(self._conn, selector, rows, cols)

    # --- files -----------------------------------------------------------------------------------------

    async def put_file(
        self, source: files.Source, remote: str, *, mode: int | None = None, mkdirs: bool = False
    ) -> int:
        """Upload a local Path, bytes or async iterable of chunks to ``remote``; returns bytes written.

        The guest file is replaced atomically. ``mode`` defaults to the local file's (0o644 otherwise).
        """
        return (await files.put_file(self._conn, source, remote, mode=mode, mkdirs=mkdirs)).size

    async def write_file(
        self,
        source: files.Source,
        remote: str,
        *,
        user: str | None = None,
        mode: int | None = None,
        mkdirs: bool = True,
        inplace: bool = False,
        metadata: dict[str, str] | None = None,
    ) -> files.RemoteFile:
        """Upload as ``put_file`` does, for a guest ``user``: ``remote`` may be relative to the user's
        home, the file and the directories created belong to the user. ``inplace`` writes the file where
        it is (as E2B's envd does: watchers see its own write events) instead of replacing it. Returns
        the resolved path and the size written. ``metadata`` replaces the file's user-defined metadata
        (E2B's ``user.e2b.*`` xattrs; ``{}`` clears it) and comes back as the file keeps it."""
        return await files.put_file(
            self._conn,
            source,
            remote,
            mode=mode,
            mkdirs=mkdirs,
            user=user,
            inplace=inplace,
            metadata=metadata,
        )

    async def get_file(
        self, remote: str, local: Path, max_size: int = limits.DOWNLOAD_MAX_BYTES
    ) -> files.RemoteFile:
        """Download ``remote`` into ``local`` (replaced atomically, mode made safe, at most ``max_size``
        bytes: ``FileTooLarge`` otherwise, with nothing kept)."""
        return await files.get_file(self._conn, remote, local, max_size)

    async def open_file(self, remote: str, *, user: str | None = None) -> files.Download:
        """Stream a guest file: ``async with await client.open_file(p) as d: async for chunk in d``.
        A relative ``remote`` is taken from ``user``'s home."""
        return await files.open_download(self._conn, remote, user=user)

    # --- filesystem (E2B's filesystem service) --------------------------------------------------------

    async def stat(self, path: str, *, user: str | None = None) -> fs.Entry:
        """The entry of ``path``; RemoteError with errno ENOENT when it does not exist."""
        return await fs.stat_path(self._conn, path, user=user)

    async def list_dir(
        self, path: str, *, depth: int = 1, user: str | None = None, limit: int = limits.E2B_LIST_MAX_ENTRIES
    ) -> fs.Listing:
        """Entries under directory ``path``, ``depth`` levels down, at most ``limit``."""
        return await fs.list_dir(self._conn, path, depth=depth, user=user, limit=limit)

    async def make_dir(self, path: str, *, user: str | None = None) -> fs.Entry:
        """Create a directory and its parents (owned by ``user``); errno EEXIST if it already exists."""
        return await fs.make_dir(self._conn, path, user=user)

    async def move(self, source: str, destination: str, *, user: str | None = None) -> fs.Entry:
        """Rename ``source`` to ``destination``; the destination's entry."""
        return await fs.move(self._conn, source, destination, user=user)

    async def remove(self, path: str, *, user: str | None = None) -> bool:
        """Remove a file or directory tree; False when there was nothing to remove."""
        return await fs.remove(self._conn, path, user=user)

    async def watch(
        self, path: str, *, user: str | None = None, recursive: bool = False, include_entry: bool = False
    ) -> fs.Watch:
        """Watch a directory; returns once the guest watches it. ``close()`` the watch to end it."""
        return await fs.open_watch(
            self._conn, path, user=user, recursive=recursive, include_entry=include_entry
        )

    # --- identity --------------------------------------------------------------------------------------

    async def configure(
        self,
        guest_identity: identity.GuestIdentity,
        *,
        timeout: float = limits.CONFIGURE_TIMEOUT,  # noqa: ASYNC109 - bounds the agent's answer
        announce: bool = True,
    ) -> identity.ConfiguredIdentity:
        """Give the guest this hostname, address, gateway, DNS and MAC (None fields stay as they are).

        Works on a guest that already has an identity: its old address and default route are replaced.
        Returns what is in effect afterwards. ``announce``: send a gratuitous ARP after a MAC or address
        change. Raises RemoteError (``bad_request``, ``not_supported``, ``io_error`` naming the failed step)
        or TimeoutError after ``timeout`` seconds; after an error the identity may be partly set.
        """
        return await identity.configure(self._conn, guest_identity, timeout=timeout, announce=announce)

    async def refresh(
        self,
        *,
        timeout: float = limits.CONFIGURE_TIMEOUT,  # noqa: ASYNC109 - bounds the agent's answer
    ) -> identity.Refreshed:
        """Fresh entropy (``limits.REFRESH_ENTROPY_BYTES`` from the host) into the guest kernel's RNG,
        reseeded, and its wall clock stepped to the host's: what a copy of a VM must not share with its
        original. ``configure`` can carry the same (``GuestIdentity.refreshed``) with an identity.
        Raises RemoteError (``unknown_op`` from an agent that predates it) or TimeoutError."""
        return await identity.refresh(self._conn, timeout=timeout)

    # --- lifecycle -------------------------------------------------------------------------------------

    async def shutdown(self) -> None:
        """Ask the agent to power the guest off (on a host: to exit); then close the client."""
        stream = self._conn.open_stream({"op": "shutdown"})
        try:
            await stream.recv_until(FrameType.END)
        except AgentDisconnected:
            pass  # the agent may be gone before its answer got out
        finally:
            stream.close()
            await self.close()

    async def close(self) -> None:
        await self._conn.close()

    async def wait_closed(self) -> str:
        """Wait for the agent to drop the connection; returns the reason."""
        return await self._conn.wait_closed()

    async def __aenter__(self) -> AgentClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


async def connect(endpoint: AgentEndpoint, *, attempt_timeout: float = 10.0) -> AgentClient:
    """One connection attempt, including the handshake, bounded by ``attempt_timeout`` seconds."""
    stage = "connect"
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(attempt_timeout):
            reader, writer = await open_stream(endpoint)
            if isinstance(endpoint, HybridVsockEndpoint):
                stage = f"CONNECT {endpoint.port}"
                await hybrid_vsock_connect((reader, writer), endpoint.port)
            stage = "CLAWPOT-HELLO"
            serial = isinstance(endpoint, SerialSocketEndpoint)
            conn = await AgentConnection.open(reader, writer, describe(endpoint), resync=serial)
    except TimeoutError:
        if writer is not None:
            writer.close()
        raise TimeoutError(f"no reply to {stage} within {attempt_timeout:.3g} s") from None
    except BaseException:
        if writer is not None:
            writer.close()
        raise
    return AgentClient(conn, endpoint)


async def wait_ready(
    endpoint: AgentEndpoint,
    deadline: float = 60.0,
    *,
    attempt_timeout: float | None = None,
    retry_interval: float = 0.2,
) -> AgentClient:
    """Connect to the agent, retrying with fresh connections for up to ``deadline`` seconds.

    Each attempt is bounded by ``attempt_timeout`` (default 2 s; for a serial socket the whole remaining
    deadline, since the agent reads the HELLO queued on the port whenever it starts). Raises
    ``AgentUnreachable`` naming the endpoint and the last error, or ``ProtocolError`` at once when an agent
    answered but cannot be talked to.
    """
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    per_attempt = attempt_timeout or (
        deadline if isinstance(endpoint, SerialSocketEndpoint) else DEFAULT_ATTEMPT_TIMEOUT
    )
    attempts = 0
    last_error = "no attempt was made"
    while (remaining := end - loop.time()) > 0:
        attempts += 1
        try:
            return await connect(endpoint, attempt_timeout=min(per_attempt, remaining))
        except ProtocolError:
            raise
        except (OSError, TimeoutError, GuestError) as exc:
            last_error = str(exc) or type(exc).__name__
            if isinstance(exc, OSError) and exc.strerror:
                last_error = exc.strerror if not exc.filename else f"{exc.strerror}: {exc.filename}"
            log.debug("agent at %s not ready (attempt %d): %s", describe(endpoint), attempts, last_error)
        await asyncio.sleep(max(0.0, min(retry_interval, end - loop.time())))
    if isinstance(endpoint, SerialSocketEndpoint) and "no reply" in last_error:
        last_error += " (a serial port serves one host connection at a time: is another client connected?)"
    raise AgentUnreachable(describe(endpoint), deadline, last_error, attempts)
