"""VM lifetimes: a deadline per VM, stored, and the reaper that acts when one passes.

A VM may carry a ``Lifetime``: when (wall-clock epoch seconds, so it means the same after a server
restart) and what happens then (``Expiry``): the VM is deleted, or, for E2B's ``autoPause``, a Running
VM is paused and keeps no deadline (a paused E2B sandbox lives until it is resumed or killed). A VM
that is already Paused or in Error when a DELETE deadline passes is deleted too: it still holds its
directory, and a paused one its memory. A lifetime counts from when the VM runs (the service sets it
again when the create returns); a VM still booting is not reaped.

The deadline lives in ``state.db`` (table ``vm_lifetimes``, migration 4), written in the same
transaction as the VM's row at create, so it survives a restart; the reaper is one task per node that
sleeps until the earliest deadline (or until a deadline changes) and hands each expired VM to the
node's own delete/pause, which finish even if the reaper is cancelled meanwhile (cancel-safe: the
node's operations run in their own tasks). A failed expiry is logged and retried a little later.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from clawpot import limits
from clawpot.vm.state import VmState

if TYPE_CHECKING:
    from clawpot.node.vms import NodeVm

log = logging.getLogger(__name__)

# A VM still booting is left alone: its create restarts its lifetime when it runs.
BOOTING = (VmState.NOT_STARTED, VmState.STARTING)


class Expiry(enum.StrEnum):
    """What happens to a VM when its lifetime ends."""

    DELETE = "delete"
    PAUSE = "pause"  # E2B's autoPause: a Running VM is paused (and keeps no deadline)


@dataclass(frozen=True)
class Lifetime:
    expires_at: float  # epoch seconds (time.time()): survives a restart, unlike a monotonic clock
    on_expiry: Expiry = Expiry.DELETE

    @classmethod
    def from_now(cls, seconds: float, on_expiry: Expiry = Expiry.DELETE) -> Lifetime:
        return cls(time.time() + seconds, on_expiry)


class Reaper:
    """The node's one task that ends VMs whose lifetime has passed.

    ``vms`` is the node's live table (read, never changed here); ``expire`` is the node's action for
    one VM (delete or pause). ``changed()`` wakes the reaper after a deadline was set or moved.
    """

    def __init__(
        self,
        vms: Mapping[str, NodeVm],
        expire: Callable[[NodeVm], Awaitable[None]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._vms = vms
        self._expire = expire
        self._clock = clock
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._working: dict[str, asyncio.Task[None]] = {}
        self._retry_at: dict[str, float] = {}

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="VM lifetimes")

    async def stop(self) -> None:
        """Stop looking for deadlines; a delete or pause already under way is let finish (the node is
        about to close: it must not close under a half-done delete)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await asyncio.gather(*self._working.values(), return_exceptions=True)

    def changed(self) -> None:
        self._wake.set()

    def _due(self, now: float) -> tuple[list[NodeVm], float | None]:
        """The VMs to act on now, and the next time something may be due (None: nothing pending)."""
        due: list[NodeVm] = []
        upcoming: float | None = None
        for nvm in self._vms.values():
            if nvm.lifetime is None or nvm.deleting or nvm.id in self._working:
                continue
            if nvm.record.state in BOOTING:
                continue  # its boot is bounded by the ready timeout; the service restarts the clock after
            when = max(nvm.lifetime.expires_at, self._retry_at.get(nvm.id, 0.0))
            if when <= now:
                due.append(nvm)
            elif upcoming is None or when < upcoming:
                upcoming = when
        return due, upcoming

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            due, upcoming = self._due(self._clock())
            for nvm in due:
                self._working[nvm.id] = asyncio.create_task(self._end(nvm), name=f"expire {nvm.id}")
            # Sleep until the next deadline, but never longer than the cap: a wall clock that jumps
            # (NTP, a suspended host) is noticed within it.
            delay = limits.LIFETIME_MAX_SLEEP
            if upcoming is not None:
                delay = min(delay, max(0.0, upcoming - self._clock()))
            # asyncio.timeout, not wait_for: 3.11's wait_for swallows a cancellation that arrives as the
            # event is set (a deadline changed just before close), and stop() would wait forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    async def _end(self, nvm: NodeVm) -> None:
        if nvm.lifetime is None or nvm.lifetime.expires_at > self._clock():
            self._working.pop(nvm.id, None)  # moved or removed since it was found due
            self._wake.set()
            return
        try:
            log.info("VM %s: lifetime ended, %s", nvm.id, nvm.lifetime.on_expiry if nvm.lifetime else "-")
            await self._expire(nvm)
            self._retry_at.pop(nvm.id, None)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("VM %s: ending its lifetime failed (%s); retrying", nvm.id, exc)
            self._retry_at[nvm.id] = self._clock() + limits.LIFETIME_RETRY_INTERVAL
        finally:
            self._working.pop(nvm.id, None)
            self._wake.set()
