"""Guest entries and watch events (``clawpot.agent_client.fs``) as E2B's envd words them in protobuf.

envd builds ``EntryInfo`` from Go's ``os.Lstat``: ``permissions`` is Go's ``FileMode.String()`` of the
entry itself (``-rw-r--r--``, ``drwxr-xr-x``, ``Lrwxrwxrwx`` for a link); ``type`` and ``mode`` (the
permission bits) are those of a symlink's target (FILE_TYPE_UNSPECIFIED and 0 for a dangling link),
and ``symlink_target`` is set only for links.
"""

from __future__ import annotations

import stat

from protobuf.wkt.google.protobuf.timestamp_pb import Timestamp

from clawpot.agent_client.fs import Entry, WatchEvent
from clawpot.e2b.envd.gen.filesystem import filesystem_pb as pb

# Go's FileMode type letters, in the order String() prints them, with the st_mode test for each
# (append-only, exclusive, temporary and irregular never come out of a Linux stat).
_IFMT = 0o170000  # the file type bits of st_mode (stat.S_IFMT is a function)
_GO_TYPE_LETTERS: tuple[tuple[str, int, int], ...] = (
    ("d", _IFMT, stat.S_IFDIR),
    ("L", _IFMT, stat.S_IFLNK),
    ("D", _IFMT, stat.S_IFBLK),  # ModeDevice, for block devices...
    ("D", _IFMT, stat.S_IFCHR),  # ...and character devices (which also get 'c' below)
    ("p", _IFMT, stat.S_IFIFO),
    ("S", _IFMT, stat.S_IFSOCK),
    ("u", stat.S_ISUID, stat.S_ISUID),
    ("g", stat.S_ISGID, stat.S_ISGID),
    ("c", _IFMT, stat.S_IFCHR),
    ("t", stat.S_ISVTX, stat.S_ISVTX),
)

EVENT_TYPES = {
    "create": pb.EventType.CREATE,
    "write": pb.EventType.WRITE,
    "remove": pb.EventType.REMOVE,
    "rename": pb.EventType.RENAME,
    "chmod": pb.EventType.CHMOD,
}


def go_mode_string(mode: int) -> str:
    """Go's ``os.FileMode(...).String()`` for a Linux ``st_mode``: type letters (or ``-``) + rwxrwxrwx."""
    letters = "".join(letter for letter, mask, value in _GO_TYPE_LETTERS if mode & mask == value)
    perms = "".join(ch if mode & (1 << (8 - i)) else "-" for i, ch in enumerate("rwxrwxrwx"))
    return (letters or "-") + perms


def file_type(mode: int | None) -> pb.FileType:
    if mode is None:
        return pb.FileType.UNSPECIFIED
    if stat.S_ISREG(mode):
        return pb.FileType.FILE
    if stat.S_ISDIR(mode):
        return pb.FileType.DIRECTORY
    return pb.FileType.UNSPECIFIED


def timestamp(ns: int) -> Timestamp:
    seconds, nanos = divmod(ns, 1_000_000_000)
    return Timestamp(seconds=seconds, nanos=nanos)


def entry_info(entry: Entry) -> pb.EntryInfo:
    effective = entry.effective_mode
    info = pb.EntryInfo(
        name=entry.name,
        type=file_type(effective),
        path=entry.path,
        size=entry.size,
        mode=stat.S_IMODE(effective) & 0o777 if effective is not None else 0,
        permissions=go_mode_string(entry.mode),
        owner=entry.owner,
        group=entry.group,
        modified_time=timestamp(entry.mtime_ns) if entry.mtime_ns else None,
        metadata=dict(entry.metadata or {}),
    )
    if entry.is_symlink:
        info.symlink_target = entry.target or entry.path
    return info


def filesystem_event(event: WatchEvent) -> pb.FilesystemEvent:
    out = pb.FilesystemEvent(name=event.name, type=EVENT_TYPES[event.type])
    if event.entry is not None:
        out.entry = entry_info(event.entry)
    return out
