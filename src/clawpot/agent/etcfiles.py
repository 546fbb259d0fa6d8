"""The guest's identity files: ``hostname``, ``hosts`` and ``resolv.conf`` in /etc, replaced atomically.

Each file is written to a temporary file beside it and renamed over it, so a reader sees the old or the
new content, never a mix. rename(2) replaces a symbolic link itself: a ``resolv.conf`` that points
elsewhere (into /run, or /proc/net/pnp after a kernel ``ip=`` boot) becomes a regular file. A file that
already holds the wanted content is left alone, so configuring the same identity twice writes nothing.
No fsync: the files live on the VM's throw-away writable layer, and a VM that dies is configured again
when it is replaced; the rename alone keeps them consistent.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

_HOSTS_LINE = "127.0.1.1"  # Debian's line for the machine's own name
_MAX_READ = 1024 * 1024  # the guest's own files; a larger one is not a hosts file, it is left as is


def read_text(path: Path) -> str | None:
    """The file's content (following links), or None when it is missing or unreadable."""
    try:
        with open(path, "rb") as f:
            return f.read(_MAX_READ).decode("utf-8", errors="replace")
    except OSError:
        return None


def replace_file(path: Path, text: str) -> bool:
    """Make ``path`` a regular file holding ``text``; False when it already was (nothing written)."""
    if not path.is_symlink() and read_text(path) == text:
        return False
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".clawpot-part")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            os.fchmod(f.fileno(), 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return True


def hosts_text(current: str | None, hostname: str) -> str:
    """``current`` /etc/hosts with the machine's own line naming ``hostname`` (added when missing)."""
    if current is None:
        return f"127.0.0.1\tlocalhost\n{_HOSTS_LINE}\t{hostname}\n"
    lines = current.splitlines()
    own = f"{_HOSTS_LINE}\t{hostname}"
    mine = [i for i, line in enumerate(lines) if line.split()[:1] == [_HOSTS_LINE]]
    if mine:
        lines[mine[0]] = own
        lines = [line for i, line in enumerate(lines) if i not in mine[1:]]
    else:
        lines.append(own)
    return "\n".join(lines) + "\n"


def resolv_text(servers: tuple[str, ...]) -> str:
    return "# written by the clawpot agent (configure)\n" + "".join(f"nameserver {s}\n" for s in servers)


def nameservers(text: str | None) -> list[str]:
    found = []
    for line in (text or "").splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            found.append(fields[1])
    return found
