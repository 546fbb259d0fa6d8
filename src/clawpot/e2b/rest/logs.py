"""A sandbox's logs for E2B's log endpoints: the guest's serial console, the one log Clawpot keeps.

The console is guest-written (untrusted): it is read from its end, bounded, and made printable by
``vmm.logtail``. Lines carry no wall-clock time; a kernel line's ``[ secs.usecs]`` prefix is placed at
the VM's start time plus those seconds, and other lines take the time of the line before them, so
times never go backwards and ``start`` filters work.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from clawpot import limits
from clawpot.vm.directory import read_metadata
from clawpot.vmm.logtail import tail_lines

_PRINTK = re.compile(r"\[\s*(\d+)\.(\d+)\]")


@dataclass(frozen=True)
class LogLine:
    timestamp: float  # epoch seconds
    line: str


def console_path(vm_dir: Path) -> Path:
    metadata = read_metadata(vm_dir / "metadata.json")
    if metadata is not None and metadata.serial_log:
        return Path(metadata.serial_log)
    return vm_dir / "console.log"


def console_lines(vm_dir: Path, started_at: float) -> list[LogLine]:
    lines: list[LogLine] = []
    last = started_at
    for text in tail_lines(console_path(vm_dir), limits.E2B_LOG_TAIL_BYTES):
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
