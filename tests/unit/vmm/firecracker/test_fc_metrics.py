"""The Firecracker metrics reader against a hostile writer (a real FIFO, a real event loop), and the
collector's series for it read back with prometheus_client's own parser."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from pathlib import Path

from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from clawpot import limits
from clawpot.metrics.collector import NodeCollector, NodeSample, VmSample
from clawpot.vm.state import VmState
from clawpot.vmm.console import open_fifo
from clawpot.vmm.firecracker.metrics import COUNTERS, LineBuffer, MetricsReader, parse_document
from clawpot.vmm.spec import BackendKind


def doc(actions: int, **extra: object) -> bytes:
    body = {
        "utc_timestamp_ms": 1,
        "put_api_requests": {"actions_count": actions, "actions_fails": 0},
        "vcpu": {"exit_io_in": 5, "exit_mmio_read": 2},
        "latencies_us": {"nested": {"deeper": 1}},  # deeper than Firecracker writes: skipped
        **extra,
    }
    return json.dumps(body).encode() + b"\n"


async def settle(reader: MetricsReader, documents: int) -> None:
    for _ in range(500):
        if reader.state.documents >= documents:
            return
        await asyncio.sleep(0.002)


async def test_keeps_the_latest_document_and_sums_the_counters(tmp_path: Path) -> None:
    reader = MetricsReader.from_fifo(tmp_path / "metrics.fifo")
    writer = open_fifo(tmp_path / "metrics.fifo", blocking=True)
    try:
        os.write(writer, doc(1))
        await settle(reader, 1)
        os.write(writer, doc(2)[:10])  # a partial line: nothing yet
        await asyncio.sleep(0.02)
        assert reader.state.documents == 1
        os.write(writer, doc(2)[10:])
        await settle(reader, 2)
        assert reader.state.latest is not None
        assert reader.state.latest["put_api_requests.actions_count"] == 2
        assert reader.state.latest["utc_timestamp_ms"] == 1
        assert "latencies_us.nested" not in reader.state.latest
        # Firecracker reports each counter's change since its last flush: the totals add them up.
        assert reader.state.totals["put_api_requests.actions_count"] == 3
        assert reader.state.totals["vcpu.exit_io_in"] == 10
        age = reader.state.age()
        assert age is not None and 0 <= age < 5
    finally:
        os.close(writer)
        reader.close()


async def test_a_hostile_writer_cannot_grow_the_buffer_or_break_the_reader(tmp_path: Path) -> None:
    reader = MetricsReader.from_fifo(tmp_path / "metrics.fifo")
    writer = open_fifo(tmp_path / "metrics.fifo", blocking=False)
    loop_writes: list[bytes] = [
        b"x" * (limits.FC_METRICS_MAX_LINE + 1000) + doc(100),  # one huge line, dropped whole
        b"not json at all\n",
        b"[1, 2, 3]\n",
        b"[" * 200_000 + b"\n",  # nesting too deep for json: a RecursionError, caught
        b'{"a": NaN}\n',
        b'{"a": ' + b"9" * 100_000 + b"}\n",  # a huge integer: a float, inf, not kept
        b"\xff\xfe\n",
        json.dumps({f"k{i}": i for i in range(limits.FC_METRICS_MAX_KEYS + 1)}).encode() + b"\n",
    ]
    try:
        os.write(writer, doc(1))
        await settle(reader, 1)
        for data in loop_writes:
            view = memoryview(data)
            while view:
                try:
                    view = view[os.write(writer, view) :]
                except BlockingIOError:
                    await asyncio.sleep(0.001)  # the reader runs meanwhile
                assert len(reader.lines._buf) <= limits.FC_METRICS_MAX_LINE
        os.write(writer, doc(7))
        for _ in range(500):
            if reader.state.latest and reader.state.latest.get("put_api_requests.actions_count") == 7:
                break
            await asyncio.sleep(0.002)
        assert reader.state.latest is not None
        assert reader.state.latest["put_api_requests.actions_count"] == 7
        # Neither the huge line's tail (its document) nor any garbage counted.
        assert reader.state.totals["put_api_requests.actions_count"] == 1 + 7
        assert reader.lines.dropped >= 1
        assert reader.state.rejected >= 1
    finally:
        os.close(writer)
        reader.close()


def test_line_buffer_drops_a_long_line_up_to_its_newline() -> None:
    lines = LineBuffer(max_line=8)
    assert lines.feed(b"12345") == []
    assert lines.feed(b"6789") == []  # 9 bytes: over the bound, dropped
    assert lines.feed(b"abc\nok\n") == [b"ok"]
    assert lines.feed(b"12345678\n") == [b"12345678"]  # exactly the bound is kept
    assert lines.dropped == 1


def test_parse_keeps_only_finite_numbers_and_bounds_the_keys() -> None:
    assert parse_document(b'{"a": {"b": 1, "c": "s", "d": true, "e": [1]}, "f": 2.5}') == {
        "a.b": 1.0,
        "f": 2.5,
    }
    assert parse_document(b'{"a": 1, "b": 2}', max_keys=1) is None
    assert parse_document(b'"a string"') is None
    assert parse_document(b'{"a": 1e999}') == {}  # inf: not a metric


def test_collector_shows_running_firecracker_vms_only() -> None:
    from clawpot.vmm.firecracker.metrics import MetricsState

    state = MetricsState()
    first = parse_document(doc(1))
    assert first is not None
    state.accept(first, 100.0)
    state.accept(first, 100.0)
    fc = state.snapshot()
    vms = [
        VmSample("fc-1", BackendKind.FIRECRACKER, VmState.RUNNING, 1, None, fc),
        VmSample("fc-stopped", BackendKind.FIRECRACKER, VmState.STOPPED, None, None, fc),
        VmSample("qemu-1", BackendKind.QEMU, VmState.RUNNING, 2, None),
    ]
    registry = CollectorRegistry()
    registry.register(NodeCollector(lambda: NodeSample(vms, None, 0, 0, 0)))
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}
    counters = families["clawpot_firecracker_metric"]
    assert counters.type == "counter"
    shown = {(s.labels["id"], s.labels["backend"], s.labels["name"]): s.value for s in counters.samples}
    assert shown == {
        ("fc-1", "firecracker", "put_api_requests.actions_count"): 2.0,
        ("fc-1", "firecracker", "put_api_requests.actions_fails"): 0.0,
        ("fc-1", "firecracker", "vcpu.exit_io_in"): 10.0,
        ("fc-1", "firecracker", "vcpu.exit_mmio_read"): 4.0,
    }
    assert all(name in COUNTERS for (_, _, name) in shown)
    (age,) = families["clawpot_firecracker_metrics_age_seconds"].samples
    assert age.labels == {"id": "fc-1", "backend": "firecracker"} and age.value > 0
    (documents,) = families["clawpot_firecracker_metrics_documents"].samples
    assert documents.value == 2


async def test_an_adopted_firecracker_reads_its_metrics_fifo_again(tmp_path: Path) -> None:
    """A stand-in for the adopted firecracker (a real ``sleep``: only its PID matters here) whose VM
    directory holds the metrics FIFO a previous server made; the new server reads it again."""
    import signal

    from clawpot.vm import procfs
    from clawpot.vmm.base import AttachRecord
    from clawpot.vmm.firecracker.attached import AttachedFirecracker
    from clawpot.vmm.firecracker.metrics import METRICS_FIFO_NAME

    vm_dir = tmp_path / "vm"
    vm_dir.mkdir()
    os.mkfifo(vm_dir / METRICS_FIFO_NAME, 0o600)
    writer = open_fifo(vm_dir / METRICS_FIFO_NAME, blocking=True)
    os.write(writer, doc(4))  # flushed while no server ran: waiting in the FIFO
    sleeper = await asyncio.create_subprocess_exec("sleep", "60")
    try:
        record = AttachRecord(sleeper.pid, procfs.start_ticks(sleeper.pid), vm_dir, None)
        adopted = AttachedFirecracker(record, BackendKind.FIRECRACKER)
        assert adopted.metrics is not None
        await settle(adopted.metrics, 1)
        assert adopted.metrics.state.totals["put_api_requests.actions_count"] == 4
        sleeper.send_signal(signal.SIGKILL)
        await asyncio.wait_for(adopted.wait(), 10)
        assert adopted.metrics._fd is None  # stopped reading when the VMM went
    finally:
        if sleeper.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                sleeper.kill()
        await sleeper.wait()
        os.close(writer)
