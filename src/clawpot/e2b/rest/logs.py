"""A sandbox's logs for E2B's log endpoints: the guest's serial console, the one log Clawpot keeps.

Read through the same path as ``clawpot logs`` (``Service.logs`` → ``clawpot.node.console``): the
backend's console file and its rotated predecessor, kept for a VM in Error until it is deleted. The
console is guest-written (untrusted): its last ``limits.LOGS_TAIL_MAX_LINES`` lines, each made
printable by ``vmm.logtail.printable``. Lines carry no wall-clock time; a kernel line's
``[ secs.usecs]`` prefix is placed at the VM's start time plus those seconds, and other lines take
the time of the line before them, so times never go backwards and ``start`` filters work.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from clawpot import limits
from clawpot.service.service import Service
from clawpot.vmm.logtail import printable

_PRINTK = re.compile(r"\[\s*(\d+)\.(\d+)\]")


@dataclass(frozen=True)
class LogLine:
    timestamp: float  # epoch seconds
    line: str


async def console_lines(service: Service, vm_id: str, started_at: float) -> list[LogLine]:
    stream = await service.logs(vm_id, limits.LOGS_TAIL_MAX_LINES, False)
    return parse(b"".join([chunk async for chunk in stream]), started_at)


def parse(data: bytes, started_at: float) -> list[LogLine]:
    lines: list[LogLine] = []
    last = started_at
    for raw in data.decode(errors="replace").splitlines():
        text = printable(raw)
        if not text.strip():
            continue
        found = _PRINTK.match(text)
        if found is not None:
            last = max(last, started_at + int(found.group(1)) + float(f"0.{found.group(2)}"))
        lines.append(LogLine(last, text))
    return lines


def select(
    lines: list[LogLine], start_ms: int | None, limit: int, *, backward: bool = False
) -> list[LogLine]:
    """Lines at or after ``start_ms`` (forward) or before it (backward), at most ``limit``."""
    if start_ms is None:
        chosen = lines
    elif backward:
        chosen = [ln for ln in lines if ln.timestamp * 1000 <= start_ms]
    else:
        chosen = [ln for ln in lines if ln.timestamp * 1000 >= start_ms]
    if backward:
        return list(reversed(chosen[-limit:])) if limit else []
    return chosen[:limit]
