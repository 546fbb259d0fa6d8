"""The VM lifecycle as an explicit state machine.

    NotStarted ──► Starting ──► Running ──► Stopping ──► Stopped
                      │  └──────────────────►┘   ▲
                      └──► Error ◄──── Running   │ (delete of a failed VM)
                            └────────────────────┘

    Running ⇄ Paused (vCPUs stopped, the VMM and what it holds kept); Paused ──► Stopping (delete),
    Paused ──► Error (its VMM exited).

Illegal transitions raise ``IllegalTransition``. Every transition is timestamped, kept in
``history`` and delivered to subscribers, so callers can wait for a state instead of polling.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Callable
from dataclasses import dataclass


class VmState(enum.StrEnum):
    NOT_STARTED = "NotStarted"
    STARTING = "Starting"
    RUNNING = "Running"
    PAUSED = "Paused"
    STOPPING = "Stopping"
    STOPPED = "Stopped"
    ERROR = "Error"


LEGAL_TRANSITIONS: dict[VmState, frozenset[VmState]] = {
    VmState.NOT_STARTED: frozenset({VmState.STARTING}),
    VmState.STARTING: frozenset({VmState.RUNNING, VmState.STOPPING, VmState.ERROR}),
    VmState.RUNNING: frozenset({VmState.PAUSED, VmState.STOPPING, VmState.ERROR}),
    VmState.PAUSED: frozenset({VmState.RUNNING, VmState.STOPPING, VmState.ERROR}),
    VmState.STOPPING: frozenset({VmState.STOPPED}),
    VmState.STOPPED: frozenset(),
    # A failed VM is still torn down through Stopping so its resources are released.
    VmState.ERROR: frozenset({VmState.STOPPING}),
}


class IllegalTransition(RuntimeError):
    def __init__(self, current: VmState, target: VmState) -> None:
        super().__init__(f"illegal VM state transition {current} -> {target}")
        self.current = current
        self.target = target


@dataclass(frozen=True)
class Transition:
    source: VmState
    target: VmState
    at: float  # time.time()
    reason: str = ""


Listener = Callable[[Transition], None]


class StateMachine:
    def __init__(self, initial: VmState = VmState.NOT_STARTED) -> None:
        self._state = initial
        self._history: list[Transition] = []
        self._listeners: list[Listener] = []
        # asyncio.Event binds to a loop only on first wait, so creating it here is safe.
        self._changed = asyncio.Event()
        self.reason = ""

    @property
    def state(self) -> VmState:
        return self._state

    @property
    def history(self) -> tuple[Transition, ...]:
        return tuple(self._history)

    def can_transition(self, target: VmState) -> bool:
        return target in LEGAL_TRANSITIONS[self._state]

    def transition(self, target: VmState, reason: str = "") -> Transition:
        if not self.can_transition(target):
            raise IllegalTransition(self._state, target)
        event = Transition(self._state, target, time.time(), reason)
        self._state = target
        if reason or target is VmState.ERROR:
            self.reason = reason
        self._history.append(event)
        for listener in list(self._listeners):
            listener(event)
        self._changed.set()
        self._changed = asyncio.Event()
        return event

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` on every transition; returns an unsubscribe function."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    async def wait_for(self, *states: VmState) -> VmState:
        """Wait until the machine is in one of ``states`` (returns at once if it already is)."""
        while self._state not in states:
            await self._changed.wait()
        return self._state
