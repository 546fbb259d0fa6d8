"""Firecracker's own metrics, read from a FIFO in the VM directory and bounded.

Firecracker writes one JSON object per line to its ``metrics_path``: every 60 s, and at each
``PUT /actions {"action_type": "FlushMetrics"}``. Into a plain file that is ~4.5 KB a minute per VM,
never trimmed; so the configuration names ``metrics.fifo`` in the VM directory instead (hard-linked
into the jail like the other files), and a ``MetricsReader`` in the launcher's event loop reads it
without end and keeps only what the last complete document said. Nothing reaches the disk.

Firecracker opens the path itself, read-write and non-blocking (checked with v1.12): opening a FIFO
that way never waits and never fails with ENXIO, and a write never gets EPIPE. A full FIFO (no server
reading, 64 KiB) makes one flush fail, which firecracker logs and goes on: it is never blocked. The
reader holds the FIFO read-write too (``clawpot.vmm.console.open_fifo``), so it never sees an end of file.

The document is untrusted (a compromised firecracker writes what it likes): a line longer than
``limits.FC_METRICS_MAX_LINE`` is dropped up to its newline, never buffered; a line that is not a JSON
object, or nests too deep, is ignored; only numbers are kept, flattened to ``group.name`` (two levels,
what Firecracker writes), at most ``limits.FC_METRICS_MAX_KEYS`` of them.

Most of Firecracker's metrics are counters it reports as the change since its previous flush
(``SharedIncMetric``); ``COUNTERS`` are such names, and the reader adds each document's value to a
running total, which is what ``/metrics`` shows (``clawpot.metrics.collector``). A flush that failed
(nobody read the FIFO) is lost to the totals, as is everything before a server restart.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from clawpot import limits
from clawpot.vmm.console import make_fifo, open_fifo

log = logging.getLogger(__name__)

METRICS_FIFO_NAME = "metrics.fifo"

# The counters shown per VM (names in Firecracker v1.12's metrics document, ``group.name``; each is
# reported as its change since the previous flush). vCPU exits by kind, block and network bytes and
# operations summed over the VM's devices, API requests (``actions`` is InstanceStart, FlushMetrics,
# SendCtrlAltDel...), and failures that say something is wrong.
COUNTERS: tuple[str, ...] = (
    "vcpu.exit_io_in",
    "vcpu.exit_io_out",
    "vcpu.exit_mmio_read",
    "vcpu.exit_mmio_write",
    "vcpu.failures",
    "block.read_bytes",
    "block.write_bytes",
    "block.read_count",
    "block.write_count",
    "net.rx_bytes_count",
    "net.tx_bytes_count",
    "net.rx_packets_count",
    "net.tx_packets_count",
    "get_api_requests.instance_info_count",
    "put_api_requests.actions_count",
    "put_api_requests.actions_fails",
    "vmm.panic_count",
)


class _Rejected(ValueError):
    """A document that is not what Firecracker writes."""


def _no_constant(name: str) -> float:
    raise _Rejected(f"{name} is not a metric")


def parse_document(line: bytes, max_keys: int = limits.FC_METRICS_MAX_KEYS) -> dict[str, float] | None:
    """The numbers of one metrics document, flattened to ``group.name`` (top-level numbers keep their
    name); None when it is not a JSON object or has more than ``max_keys`` numbers. Strings, lists,
    booleans and deeper objects are skipped."""
    try:
        # parse_int=float: a 100k-digit integer costs a float() (inf), not a quadratic int(); NaN and
        # Infinity are refused.
        doc = json.loads(line, parse_int=float, parse_constant=_no_constant)
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return None
    if not isinstance(doc, dict):
        return None
    out: dict[str, float] = {}

    def keep(name: str, value: object) -> None:
        if isinstance(value, float) and math.isfinite(value):
            if len(out) >= max_keys:
                raise _Rejected("too many metrics")
            out[name] = value

    try:
        for group, body in doc.items():
            if isinstance(body, dict):
                for name, value in body.items():
                    keep(f"{group}.{name}", value)
            else:
                keep(group, body)
    except _Rejected:
        return None
    return out


@dataclass(frozen=True)
class MetricsSnapshot:
    totals: dict[str, float]
    age: float | None  # seconds since the latest document; None before the first
    documents: int


@dataclass
class MetricsState:
    """What the reader knows: the last document, when it came, and the running totals of ``COUNTERS``."""

    latest: dict[str, float] | None = None
    received_at: float | None = None  # time.monotonic() of the latest document
    documents: int = 0
    rejected: int = 0
    totals: dict[str, float] = field(default_factory=dict)

    def accept(self, doc: dict[str, float], now: float) -> None:
        self.latest = doc
        self.received_at = now
        self.documents += 1
        for name in COUNTERS:
            value = doc.get(name)
            if value is not None and value >= 0:
                self.totals[name] = self.totals.get(name, 0.0) + value

    def snapshot(self) -> MetricsSnapshot:
        """A copy for a scrape's thread (taken on the event loop)."""
        return MetricsSnapshot(dict(self.totals), self.age(), self.documents)

    def age(self, now: float | None = None) -> float | None:
        """Seconds since the latest document (None before the first)."""
        if self.received_at is None:
            return None
        return (time.monotonic() if now is None else now) - self.received_at


class LineBuffer:
    """Splits a byte stream into lines of at most ``max_line`` bytes; a longer line is dropped whole
    (up to its newline), so the buffer never holds more than ``max_line`` bytes."""

    def __init__(self, max_line: int = limits.FC_METRICS_MAX_LINE) -> None:
        self.max_line = max_line
        self._buf = bytearray()
        self._skipping = False  # inside a line already too long: drop until its newline
        self.dropped = 0

    def feed(self, data: bytes) -> list[bytes]:
        lines: list[bytes] = []
        start = 0
        while start < len(data):
            end = data.find(b"\n", start)
            piece = data[start:] if end < 0 else data[start:end]
            if not self._skipping:
                if len(self._buf) + len(piece) > self.max_line:
                    self._buf.clear()
                    self._skipping = True
                    self.dropped += 1
                else:
                    self._buf += piece
            if end < 0:
                break
            if not self._skipping:
                lines.append(bytes(self._buf))
            self._buf.clear()
            self._skipping = False
            start = end + 1
        return lines


class MetricsReader:
    """Reads a metrics FIFO on the running event loop; ``state`` is what it has read so far.

    Reads are non-blocking, ``chunk`` bytes at most; only complete lines are parsed, and only the last
    complete line of a read (the older ones would be replaced at once anyway)."""

    def __init__(self, fd: int, path: Path, *, chunk: int = limits.FC_METRICS_READ_CHUNK) -> None:
        self.path = path
        self.chunk = chunk
        self.state = MetricsState()
        self.lines = LineBuffer()
        self._loop = asyncio.get_running_loop()
        self._fd: int | None = fd
        os.set_blocking(fd, False)
        self._loop.add_reader(fd, self._on_readable)

    @classmethod
    def from_fifo(cls, path: Path) -> MetricsReader:
        """Read the FIFO at ``path`` (made if missing)."""
        make_fifo(path)
        return cls(open_fifo(path, blocking=False), path)

    def _on_readable(self) -> None:
        if self._fd is None:
            return
        try:
            data = os.read(self._fd, self.chunk)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.warning("metrics %s: read failed (%s); no more firecracker metrics", self.path, exc)
            self.close()
            return
        if not data:  # someone replaced our FIFO: nothing more from this fd
            self.close()
            return
        self.take(data)

    def take(self, data: bytes) -> None:
        """Feed bytes read from the FIFO (the reader's own reads call this)."""
        lines = self.lines.feed(data)
        if not lines:
            return
        doc = parse_document(lines[-1])
        if doc is None:
            self.state.rejected += 1
        else:
            self.state.accept(doc, time.monotonic())

    def drain(self) -> None:
        """Read what is in the FIFO right now (a FIFO holds 64 KiB: a few reads at most)."""
        for _ in range(max(1, (1 << 20) // self.chunk)):
            if self._fd is None:
                return
            try:
                data = os.read(self._fd, self.chunk)
            except OSError:
                return
            if not data:
                return
            self.take(data)

    def close(self) -> None:
        """Stop reading; the FIFO stays (it goes with the VM directory); ``state`` is kept."""
        if self._fd is not None:
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = None
