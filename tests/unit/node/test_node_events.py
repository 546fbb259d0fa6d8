"""The event log (ring, sequence numbers, resuming, slow watchers) and the events a node on the fake VMM
emits over a VM's life (tests/support/fake_vmm.py: a real agent process stands in for the VMM)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from support import fake_vmm
from support.fake_vmm import FakeVmmBackend

from clawpot import errors
from clawpot.node import console
from clawpot.node.events import EventKind, EventLog, VmEvent
from clawpot.node.node import Node
from clawpot.node.store import Origin, VmRecord
from clawpot.service.service import CreateParams, Service
from clawpot.vm.state import VmState
from clawpot.vmm.base import Feature
from clawpot.vmm.spec import BackendKind


def _record(vm_id: str = "vm1", state: VmState = VmState.RUNNING) -> VmRecord:
    return VmRecord(
        id=vm_id, state=state, backend=BackendKind.QEMU, vcpus=1, memory_mib=256, vm_dir=Path("/nonexistent")
    )


async def _take(log: EventLog, since: int | None, count: int) -> list[VmEvent]:
    watcher = log.watch(since)
    got = []
    async for event in watcher.events():
        got.append(event)
        if len(got) == count:
            break
    watcher.close()
    return got


async def test_sequence_numbers_grow_and_a_watcher_resumes_after_the_last_one_it_got() -> None:
    log = EventLog(first_sequence=100)
    for kind in (EventKind.CREATED, EventKind.RUNNING, EventKind.PAUSED):
        log.emit(_record(), kind)
    assert [e.sequence for e in await _take(log, 0, 3)] == [100, 101, 102]
    # Resuming after 100: exactly the ones after it, in order.
    assert [e.kind for e in await _take(log, 100, 2)] == [EventKind.RUNNING, EventKind.PAUSED]
    # A live watcher sees what comes next.
    watcher = log.watch()
    log.emit(_record(), EventKind.RESUMED, state=VmState.RUNNING)
    event = await anext(watcher.events())
    assert (event.sequence, event.kind) == (103, EventKind.RESUMED)
    watcher.close()
    assert log.watchers == 0 and log.issued == 4


async def test_a_sequence_no_longer_kept_or_never_issued_is_out_of_range() -> None:
    log = EventLog(keep=3, first_sequence=1)
    for _ in range(5):
        log.emit(_record(), EventKind.CREATED)  # 1..5; 3, 4, 5 are kept
    with pytest.raises(errors.OutOfRange, match=r"no longer kept .*oldest kept is 3"):
        log.watch(1)
    assert [e.sequence for e in await _take(log, 2, 3)] == [3, 4, 5]  # 2 was seen: no gap
    with pytest.raises(errors.OutOfRange, match="never issued"):
        log.watch(6)
    assert [e.sequence for e in await _take(log, 0, 3)] == [3, 4, 5]  # 0: every kept one


def test_a_restarted_server_numbers_above_the_previous_one() -> None:
    first = EventLog()
    first.emit(_record(), EventKind.CREATED)
    second = EventLog()  # started later: its numbers start at its start time in microseconds
    event = second.emit(_record(), EventKind.CREATED)
    assert event.sequence > first.last_sequence
    with pytest.raises(errors.OutOfRange):
        second.watch(first.last_sequence)  # the previous server's events are gone: said so


async def test_a_slow_watcher_is_dropped_with_where_to_resume_and_memory_stays_bounded() -> None:
    log = EventLog(queue_size=5, first_sequence=1)
    slow = log.watch()
    for _ in range(20):  # nobody reads `slow`: it holds at most 5, then it is dropped
        log.emit(_record(), EventKind.CREATED)
    assert log.watchers == 0 and log.dropped_watchers == 1
    got = []
    with pytest.raises(errors.ResourceExhausted, match="since=5 to resume"):
        async for event in slow.events():
            got.append(event.sequence)
    assert got == [1, 2, 3, 4, 5]
    assert [e.sequence for e in await _take(log, 5, 15)] == list(range(6, 21))  # resumed, no gap


async def test_no_follow_ends_after_the_backlog_and_close_ends_live_watchers() -> None:
    log = EventLog(first_sequence=1)
    log.emit(_record(), EventKind.CREATED)
    assert [e.sequence async for e in log.watch(0, follow=False).events()] == [1]
    live = log.watch()
    task = asyncio.create_task(_collect(live.events()))
    await asyncio.sleep(0)
    log.close()
    assert await asyncio.wait_for(task, 5) == []
    with pytest.raises(errors.Unavailable, match="stopping"):
        log.watch()


async def _collect(events: object) -> list[VmEvent]:
    return [e async for e in events]  # type: ignore[attr-defined]


def test_watchers_are_bounded() -> None:
    log = EventLog(max_watchers=2)
    log.watch()
    log.watch()
    with pytest.raises(errors.ResourceExhausted, match="too many event watchers"):
        log.watch()


async def test_a_vm_life_on_the_node_is_a_sequence_of_events(node: Node, backend: FakeVmmBackend) -> None:
    backend.features = Feature.PAUSE
    service = Service(node)
    start = node.events.last_sequence
    record = (await service.create(CreateParams())).record
    await service.pause(record.id)
    await service.resume(record.id)
    assert record.pid is not None
    fake_vmm.crash(record.pid)
    await _until(lambda: node.get(record.id).record.state is VmState.ERROR)
    await service.delete(record.id)
    events = [e async for e in node.events.watch(start, follow=False).events()]
    assert [(e.vm_id, e.kind, e.state) for e in events] == [
        (record.id, EventKind.CREATED, VmState.STARTING),
        (record.id, EventKind.RUNNING, VmState.RUNNING),
        (record.id, EventKind.PAUSED, VmState.PAUSED),
        (record.id, EventKind.RESUMED, VmState.RUNNING),
        (record.id, EventKind.ERROR, VmState.ERROR),
        (record.id, EventKind.DELETED, VmState.STOPPED),
    ]
    assert "SIGKILL" in events[4].reason
    assert all(e.origin is Origin.COLD and e.backend is BackendKind.QEMU for e in events)
    assert [e.sequence for e in events] == list(range(start + 1, start + 7))


async def test_a_failed_create_is_an_error_then_deleted(node: Node, backend: FakeVmmBackend) -> None:
    start = node.events.last_sequence
    with pytest.raises(errors.Unavailable):
        await Service(node).create(CreateParams(labels={fake_vmm.LABEL: "refuse"}))
    events = [e async for e in node.events.watch(start, follow=False).events()]
    assert [e.kind for e in events] == [EventKind.CREATED, EventKind.ERROR, EventKind.DELETED]
    assert "refused its configuration" in events[1].reason


async def test_a_crashed_vm_keeps_its_console_until_it_is_deleted(
    node: Node, backend: FakeVmmBackend
) -> None:
    service = Service(node)
    record = (await service.create(CreateParams())).record
    log_path = console.console_log(record.vm_dir, record.backend)
    with log_path.open("ab") as f:
        f.write(b"last words before the crash\n")
    assert record.pid is not None
    fake_vmm.crash(record.pid)
    await _until(lambda: node.get(record.id).record.state is VmState.ERROR)
    release = node.get(record.id).release_task
    assert release is not None
    await release
    assert sorted(p.name for p in record.vm_dir.iterdir()) == [fake_vmm.CONSOLE]
    text = b"".join([chunk async for chunk in await service.logs(record.id, None, follow=False)])
    assert text.endswith(b"last words before the crash\n")
    # Following a VM in Error prints what it printed and ends: it cannot print more.
    followed = [c async for c in await service.logs(record.id, 1, follow=True)]
    assert b"".join(followed) == b"last words before the crash\n"
    await service.delete(record.id)
    assert not record.vm_dir.exists()
    with pytest.raises(errors.NotFound):
        await service.logs(record.id, None, follow=False)


async def _until(predicate: object, within: float = 10.0) -> None:
    assert callable(predicate)
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while not predicate():
        assert loop.time() < end, "condition not reached in time"
        await asyncio.sleep(0.02)
