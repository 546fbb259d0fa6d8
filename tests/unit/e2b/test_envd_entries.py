"""Entries as envd words them: Go's FileMode strings, a symlink by its target, timestamps, events."""

from __future__ import annotations

import stat

import pytest

from clawpot.agent_client.fs import Entry, WatchEvent
from clawpot.e2b.envd.entries import entry_info, file_type, filesystem_event, go_mode_string
from clawpot.e2b.envd.gen.filesystem import filesystem_pb as pb


@pytest.mark.parametrize(
    ("mode", "text"),
    [
        (stat.S_IFREG | 0o644, "-rw-r--r--"),
        (stat.S_IFDIR | 0o755, "drwxr-xr-x"),
        (stat.S_IFLNK | 0o777, "Lrwxrwxrwx"),
        (stat.S_IFCHR | 0o666, "Dcrw-rw-rw-"),
        (stat.S_IFBLK | 0o660, "Drw-rw----"),
        (stat.S_IFIFO | 0o600, "prw-------"),
        (stat.S_IFSOCK | 0o755, "Srwxr-xr-x"),
        (stat.S_IFDIR | stat.S_ISVTX | 0o777, "dtrwxrwxrwx"),
        (stat.S_IFREG | stat.S_ISUID | stat.S_ISGID | 0o755, "ugrwxr-xr-x"),
    ],
)
def test_go_mode_strings(mode: int, text: str) -> None:
    assert go_mode_string(mode) == text


def _entry(**fields: object) -> Entry:
    base: dict[str, object] = {
        "name": "f",
        "path": "/d/f",
        "mode": stat.S_IFREG | 0o4755,
        "size": 3,
        "uid": 1000,
        "gid": 1000,
        "owner": "user",
        "group": "user",
        "mtime_ns": 1_700_000_000_123_456_789,
    }
    return Entry(**{**base, **fields})  # type: ignore[arg-type]


def test_a_file_entry() -> None:
    info = entry_info(_entry(metadata={"k": "v"}))
    # mode: the permission bits only; permissions: Go prints setuid as a leading "u"
    assert (info.type, info.mode, info.permissions, info.size) == (pb.FileType.FILE, 0o755, "urwxr-xr-x", 3)
    assert (info.modified_time.seconds, info.modified_time.nanos) == (1_700_000_000, 123_456_789)
    assert not info.has_field("symlink_target") and dict(info.metadata) == {"k": "v"}


def test_links_are_described_by_their_target() -> None:
    link = entry_info(_entry(mode=stat.S_IFLNK | 0o777, target="/d/dir", target_mode=stat.S_IFDIR | 0o750))
    assert (link.type, link.mode, link.permissions, link.symlink_target) == (
        pb.FileType.DIRECTORY,
        0o750,
        "Lrwxrwxrwx",
        "/d/dir",
    )
    dangling = entry_info(_entry(mode=stat.S_IFLNK | 0o777, target="/d/f", target_mode=None))
    assert (dangling.type, dangling.mode, dangling.symlink_target) == (pb.FileType.UNSPECIFIED, 0, "/d/f")
    assert file_type(stat.S_IFIFO) == pb.FileType.UNSPECIFIED


def test_events() -> None:
    event = filesystem_event(WatchEvent("sub/f", "rename"))
    assert (event.name, event.type, event.entry) == ("sub/f", pb.EventType.RENAME, None)
    with_entry = filesystem_event(WatchEvent("f", "write", _entry()))
    assert with_entry.entry is not None and with_entry.entry.name == "f"
