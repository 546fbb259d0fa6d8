"""Calls into a Running VM's guest through its agent link: exec, upload, download. Each step runs
within the link's time budget, and each failure becomes a ``clawpot.errors`` kind: the agent refused
(FAILED_PRECONDITION / NOT_FOUND), the agent is gone or silent (UNAVAILABLE), the command's deadline
passed (DEADLINE_EXCEEDED)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from clawpot import errors, limits
from clawpot.agent_client import GuestError, PtySize
from clawpot.agent_client.errors import RemoteError
from clawpot.node.agents import one_line
from clawpot.node.sessions import DownloadHandle, ExecParams, ExecSession, upload_watched
from clawpot.node.vms import NodeVm


async def exec_in(nvm: NodeVm, params: ExecParams) -> ExecSession:
    """Start a command in the VM's guest; its output and end come through the returned session."""
    # With a timeout the host enforces it itself, whatever the guest does: the whole call (agent
    # check, start, output) ends by timeout + grace. The agent's own timer normally ends it first.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + params.timeout + limits.EXEC_TIMEOUT_GRACE if params.timeout else None
    link = nvm.agent
    agent = await link.connected(link.budget(deadline), deadline)
    rows, cols = params.rows or limits.DEFAULT_PTY_ROWS, params.cols or limits.DEFAULT_PTY_COLS
    pty = PtySize(rows, cols) if params.tty else None
    budget = link.budget(deadline)
    try:
        async with asyncio.timeout(budget):
            process = await agent.exec(
                params.argv,
                env=params.env or None,
                cwd=params.cwd,
                timeout=params.timeout,
                pty=pty,
                stdin=params.stdin,
            )
    except TimeoutError:
        raise link.too_late("start the command", budget, deadline) from None
    except RemoteError as exc:
        raise errors.FailedPrecondition(f"cannot run {errors.quote(params.argv[0])}: {exc}") from exc
    except GuestError as exc:
        link.lost(agent, exc)
        raise errors.Unavailable(f"agent of VM {nvm.id}: {one_line(exc)}") from exc
    return ExecSession(
        process, deadline=deadline, timeout=params.timeout, on_lost=lambda e: link.lost(agent, e)
    )


async def upload_to(nvm: NodeVm, path: str, mode: int, chunks: AsyncIterator[bytes]) -> int:
    """Write ``chunks`` to ``path`` in the guest; returns the size written."""
    link = nvm.agent
    agent = await link.connected(link.budget(None))
    try:
        return await upload_watched(
            lambda source: agent.put_file(source, path, mode=mode), chunks, link.agent_timeout
        )
    except TimeoutError:
        doing = f"take the data for {errors.quote(path)}"
        raise link.too_late(doing, link.agent_timeout, None) from None
    except RemoteError as exc:
        raise errors.FailedPrecondition(f"cannot write {errors.quote(path)}: {exc}") from exc
    except GuestError as exc:
        link.lost(agent, exc)
        raise errors.Unavailable(f"agent of VM {nvm.id}: {one_line(exc)}") from exc


async def download_from(nvm: NodeVm, path: str) -> DownloadHandle:
    """Open ``path`` in the guest for reading, as a stream the caller pulls."""
    link = nvm.agent
    agent = await link.connected(link.budget(None))
    budget = link.budget(None)
    try:
        async with asyncio.timeout(budget):
            download = await agent.open_file(path)
    except TimeoutError:
        raise link.too_late(f"open {errors.quote(path)}", budget, None) from None
    except RemoteError as exc:
        raise errors.NotFound(f"cannot read {errors.quote(path)}: {exc}") from exc
    except GuestError as exc:
        link.lost(agent, exc)
        raise errors.Unavailable(f"agent of VM {nvm.id}: {one_line(exc)}") from exc
    return DownloadHandle(download.info.size, download.info.mode, download, stall_timeout=budget)
