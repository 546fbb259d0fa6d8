"""The end of a log or console file, read in bounded size and made safe to quote.

Exit reasons and start failures quote what a VMM or the guest printed last: firecracker's log, QEMU's
stderr, the serial console. Those files can be large and the console is written by the guest, which is
untrusted. So this reads at most ``max_bytes`` from the end (never the whole file), decodes with
``errors="replace"``, drops a first line cut by the bound, and removes every character that is not
printable (escape sequences' ESC, carriage returns, bidirectional overrides, ...), keeping tabs and
the line breaks. What is left can go into an error message, a log line or a terminal.
"""

from __future__ import annotations

import os
from pathlib import Path


def tail_text(path: Path, max_bytes: int) -> str:
    """The last ``max_bytes`` of ``path`` as printable text and newlines; "" when it cannot be read."""
    return "\n".join(tail_lines(path, max_bytes))


def tail_lines(path: Path, max_bytes: int) -> list[str]:
    """The lines in the last ``max_bytes`` of ``path``, printable only; [] when it cannot be read."""
    if max_bytes <= 0:
        return []
    try:
        with open(path, "rb") as f:
            end = f.seek(0, os.SEEK_END)
            start = max(0, end - max_bytes)
            f.seek(start)
            data = f.read(max_bytes)
    except OSError:
        return []
    if start > 0:
        # The bound cut into a line: its end alone would be quoted as if it were the whole line.
        newline = data.find(b"\n")
        data = data[newline + 1 :] if newline >= 0 else b""
    return [printable(line) for line in data.decode(errors="replace").splitlines()]


def printable(line: str) -> str:
    """``line`` without its non-printable characters (tabs kept)."""
    if line.isprintable():  # the common case, checked in C
        return line
    return "".join(char for char in line if char.isprintable() or char == "\t")
