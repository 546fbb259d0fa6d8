"""The node's event stream: every VM state change, numbered, kept in a bounded ring, fanned out to
watchers (``WatchVms``, ``clawpot events``).

Sequence numbers only grow, also across server restarts: a server starts numbering at its start time
in microseconds, far above anything an earlier server can have reached (that would take a million
events a second). So a client that comes back with a sequence number it got from the previous server
is told plainly that the events after it are gone (``OutOfRange``), instead of silently resuming
from a number that means something else now.

Bounded everywhere, because a watcher is a client we do not control:
- the ring keeps the last ``limits.EVENTS_KEPT`` events; resuming from before the oldest kept one
  is ``OutOfRange`` (with the oldest sequence still available, so the client can decide);
- each watcher has a queue of at most ``limits.EVENTS_SUBSCRIBER_QUEUE`` events: one that falls
  further behind is dropped (``ResourceExhausted``, saying from which sequence to resume);
- at most ``limits.EVENTS_MAX_WATCHERS`` watchers at once.

``emit`` is synchronous and never waits: the node calls it from its own code paths, and a slow
watcher can never slow a VM operation down. Subscribing copies the backlog and registers the queue in
one synchronous step, so no event falls between the two.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from clawpot import errors, limits
from clawpot.node.store import Origin, VmRecord
from clawpot.vm.state import VmState
from clawpot.vmm.spec import BackendKind


class EventKind(enum.StrEnum):
    CREATED = "created"  # accepted and reserved (Starting)
    RUNNING = "running"  # its agent answered: handed out
    PAUSED = "paused"
    RESUMED = "resumed"
    ERROR = "error"  # its VMM died, or its create failed (reason says why)
    DELETED = "deleted"  # gone, with everything it held


@dataclass(frozen=True)
class VmEvent:
    sequence: int
    at: float  # time.time()
    vm_id: str
    kind: EventKind
    state: VmState
    backend: BackendKind
    origin: Origin
    reason: str = ""


class _Dropped(Exception):
    """Internal: put in a watcher's place when it fell too far behind."""


class Watcher:
    """One subscriber: the backlog it asked for, then live events, until it is closed or dropped."""

    def __init__(self, log: EventLog, backlog: list[VmEvent]) -> None:
        self._log = log
        self._backlog = collections.deque(backlog)
        # Unbounded as a container; ``_offer`` keeps it within the log's bound, and only the end marker
        # (None) may go past it.
        self._queue: asyncio.Queue[VmEvent | None] = asyncio.Queue()
        self.dropped_after: int | None = None  # the last sequence it was given, when dropped
        self.last_sequence = backlog[-1].sequence if backlog else log.last_sequence

    def _offer(self, event: VmEvent) -> bool:
        """False when the watcher is too far behind (the log then drops it)."""
        if self._queue.qsize() >= self._log.queue_size:
            return False
        self._queue.put_nowait(event)
        return True

    def _end(self) -> None:
        self._queue.put_nowait(None)

    def close(self) -> None:
        """Stop receiving events (idempotent); the stream's end also does it."""
        self._log._unsubscribe(self)

    async def events(self) -> AsyncGenerator[VmEvent, None]:
        """The backlog, then live events; ends when the log closes, raises ``ResourceExhausted``
        when this watcher was dropped for falling behind."""
        try:
            while self._backlog:
                event = self._backlog.popleft()
                self.last_sequence = event.sequence
                yield event
            while True:
                item = await self._queue.get()
                if item is None:
                    break
                self.last_sequence = item.sequence
                yield item
            if self.dropped_after is not None:
                raise errors.ResourceExhausted(
                    f"this watcher fell more than {self._log.queue_size} events behind and was dropped: "
                    f"watch again with since={self.last_sequence} to resume"
                )
        finally:
            self._log._unsubscribe(self)


class EventLog:
    def __init__(
        self,
        *,
        keep: int = limits.EVENTS_KEPT,
        queue_size: int = limits.EVENTS_SUBSCRIBER_QUEUE,
        max_watchers: int = limits.EVENTS_MAX_WATCHERS,
        first_sequence: int | None = None,
    ) -> None:
        self.queue_size = queue_size
        self.max_watchers = max_watchers
        self._ring: collections.deque[VmEvent] = collections.deque(maxlen=keep)
        # The last sequence issued; the first event gets this + 1.
        self.last_sequence = time.time_ns() // 1000 if first_sequence is None else first_sequence - 1
        self._first = self.last_sequence + 1
        self._watchers: set[Watcher] = set()
        self.dropped_watchers = 0  # for the metrics
        self._closed = False

    @property
    def oldest_kept(self) -> int:
        """The sequence of the oldest event still kept (the next one to come when none is)."""
        return self._ring[0].sequence if self._ring else self.last_sequence + 1

    @property
    def issued(self) -> int:
        """Events issued since this log was made."""
        return self.last_sequence - self._first + 1

    @property
    def watchers(self) -> int:
        return len(self._watchers)

    def emit(
        self, record: VmRecord, kind: EventKind, reason: str = "", state: VmState | None = None
    ) -> VmEvent:
        self.last_sequence += 1
        event = VmEvent(
            sequence=self.last_sequence,
            at=time.time(),
            vm_id=record.id,
            kind=kind,
            state=state if state is not None else record.state,
            backend=record.backend,
            origin=record.origin,
            reason=errors.one_line(reason, limits.MAX_VM_ERROR_CHARS) if reason else "",
        )
        self._ring.append(event)
        for watcher in list(self._watchers):
            if not watcher._offer(event):
                self._drop(watcher)
        return event

    def watch(self, since: int | None = None, *, follow: bool = True) -> Watcher:
        """A watcher of the events after ``since`` (every kept one for 0), then of new ones; only new
        ones when ``since`` is None. ``OutOfRange`` when events after ``since`` are no longer kept,
        or ``since`` was never issued."""
        if self._closed:
            raise errors.Unavailable("the server is stopping")
        if len(self._watchers) >= self.max_watchers:
            raise errors.ResourceExhausted(f"too many event watchers (at most {self.max_watchers})")
        backlog: list[VmEvent] = []
        if since is not None:
            if since > self.last_sequence:
                raise errors.OutOfRange(
                    f"sequence {since} was never issued (the last one is {self.last_sequence})"
                )
            if since != 0 and since < self.oldest_kept - 1:
                raise errors.OutOfRange(
                    f"events after sequence {since} are no longer kept (the oldest kept is "
                    f"{self.oldest_kept}; a server restart also forgets them): watch with since=0 for "
                    "every kept event, or without since for new ones"
                )
            backlog = [event for event in self._ring if event.sequence > since]
        watcher = Watcher(self, backlog)
        if follow:
            self._watchers.add(watcher)
        else:
            watcher._end()  # the backlog, then the end
        return watcher

    def close(self) -> None:
        """End every watcher's stream (the server is stopping): they finish what they were sent. New
        watchers are refused from now on."""
        self._closed = True
        for watcher in list(self._watchers):
            watcher._end()
        self._watchers.clear()

    def _drop(self, watcher: Watcher) -> None:
        self._watchers.discard(watcher)
        watcher.dropped_after = watcher.last_sequence
        self.dropped_watchers += 1
        watcher._end()

    def _unsubscribe(self, watcher: Watcher) -> None:
        self._watchers.discard(watcher)
