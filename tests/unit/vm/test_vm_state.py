"""The lifecycle state machine: every legal transition works, every other one raises."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from clawpot.vm.state import IllegalTransition, StateMachine, Transition, VmState

S = VmState
LEGAL = {
    (S.NOT_STARTED, S.STARTING),
    (S.STARTING, S.RUNNING),
    (S.STARTING, S.STOPPING),
    (S.STARTING, S.ERROR),
    (S.RUNNING, S.STOPPING),
    (S.RUNNING, S.ERROR),
    (S.RUNNING, S.PAUSED),
    (S.PAUSED, S.RUNNING),
    (S.PAUSED, S.STOPPING),
    (S.PAUSED, S.ERROR),
    (S.STOPPING, S.STOPPED),
    (S.ERROR, S.STOPPING),
}
ILLEGAL = sorted(set(itertools.product(S, S)) - LEGAL)

# The shortest path from NotStarted to each state, so a machine can be put in any state legally.
PATH_TO = {
    S.NOT_STARTED: [],
    S.STARTING: [S.STARTING],
    S.RUNNING: [S.STARTING, S.RUNNING],
    S.PAUSED: [S.STARTING, S.RUNNING, S.PAUSED],
    S.STOPPING: [S.STARTING, S.RUNNING, S.STOPPING],
    S.STOPPED: [S.STARTING, S.RUNNING, S.STOPPING, S.STOPPED],
    S.ERROR: [S.STARTING, S.ERROR],
}


def machine_in(state: VmState) -> StateMachine:
    machine = StateMachine()
    for step in PATH_TO[state]:
        machine.transition(step)
    assert machine.state is state
    return machine


def test_the_table_is_the_documented_one() -> None:
    # 12 legal transitions out of 49 pairs; guards against the table and this test drifting apart.
    assert len(LEGAL) == 12
    assert len(ILLEGAL) == 49 - 12


@pytest.mark.parametrize(("source", "target"), sorted(LEGAL))
def test_legal_transition(source: VmState, target: VmState) -> None:
    machine = machine_in(source)
    before = time.time()
    event = machine.transition(target, "because")
    assert machine.state is target
    assert (event.source, event.target, event.reason) == (source, target, "because")
    assert before <= event.at <= time.time()
    assert machine.history[-1] == event


@pytest.mark.parametrize(("source", "target"), ILLEGAL)
def test_illegal_transition_raises_and_changes_nothing(source: VmState, target: VmState) -> None:
    machine = machine_in(source)
    history = machine.history
    with pytest.raises(IllegalTransition) as info:
        machine.transition(target)
    assert (info.value.current, info.value.target) == (source, target)
    assert f"{source} -> {target}" in str(info.value)
    assert machine.state is source
    assert machine.history == history
    assert not machine.can_transition(target)


def test_full_life_is_recorded_in_order_with_timestamps() -> None:
    machine = StateMachine()
    for target in (S.STARTING, S.RUNNING, S.ERROR, S.STOPPING, S.STOPPED):
        machine.transition(target, f"to {target}")
    history = machine.history
    assert [t.target for t in history] == [S.STARTING, S.RUNNING, S.ERROR, S.STOPPING, S.STOPPED]
    assert [t.source for t in history] == [S.NOT_STARTED, S.STARTING, S.RUNNING, S.ERROR, S.STOPPING]
    assert all(a.at <= b.at for a, b in itertools.pairwise(history))


def test_error_reason_is_kept() -> None:
    machine = machine_in(S.RUNNING)
    machine.transition(S.ERROR, "firecracker exited with code 1")
    assert machine.reason == "firecracker exited with code 1"


def test_subscribers_see_every_transition_until_unsubscribed() -> None:
    machine = StateMachine()
    seen: list[Transition] = []
    unsubscribe = machine.subscribe(seen.append)
    machine.transition(S.STARTING)
    machine.transition(S.RUNNING)
    unsubscribe()
    machine.transition(S.STOPPING)
    assert [t.target for t in seen] == [S.STARTING, S.RUNNING]


async def test_wait_for_returns_when_the_state_is_reached() -> None:
    machine = StateMachine()
    waiter = asyncio.create_task(machine.wait_for(S.RUNNING, S.ERROR))
    await asyncio.sleep(0)
    assert not waiter.done()
    machine.transition(S.STARTING)
    await asyncio.sleep(0)
    assert not waiter.done()
    machine.transition(S.ERROR, "boom")
    assert await asyncio.wait_for(waiter, 5) is S.ERROR


async def test_wait_for_a_current_state_returns_at_once() -> None:
    machine = machine_in(S.RUNNING)
    assert await asyncio.wait_for(machine.wait_for(S.RUNNING), 5) is S.RUNNING
