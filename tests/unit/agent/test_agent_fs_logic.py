"""Pure logic of the agent's filesystem operations: path resolution for a user, inotify decoding."""

from __future__ import annotations

import struct

import pytest

from clawpot.agent.accounts import Account, resolve
from clawpot.agent.fsops import base_name
from clawpot.agent.session import SessionError
from clawpot.agent.watch import (
    IN_ATTRIB,
    IN_CREATE,
    IN_DELETE,
    IN_DELETE_SELF,
    IN_ISDIR,
    IN_MODIFY,
    IN_MOVE_SELF,
    IN_MOVED_FROM,
    IN_MOVED_TO,
    event_types,
    parse_events,
)

USER = Account("user", 1000, 1000, "/home/user")


@pytest.mark.parametrize(
    ("path", "resolved"),
    [
        ("/abs/../kept", "/abs/../kept"),  # absolute paths are taken as given, as envd does
        ("file.txt", "/home/user/file.txt"),
        ("a/../b", "/home/user/b"),
        ("../other", "/home/other"),
        ("~", "/home/user"),
        ("~/x/y", "/home/user/x/y"),
        (".", "/home/user"),
    ],
)
def test_resolve_like_envd(path: str, resolved: str) -> None:
    assert resolve(path, USER) == resolved


def test_resolve_refuses_what_envd_refuses() -> None:
    with pytest.raises(SessionError, match="only ~ and ~/"):
        resolve("~root/x", USER)
    with pytest.raises(SessionError, match="needs a user"):
        resolve("relative", None)


@pytest.mark.parametrize(("path", "name"), [("/a/b", "b"), ("/a/b/", "b"), ("/", "/"), ("//", "/")])
def test_base_name_like_go(path: str, name: str) -> None:
    assert base_name(path) == name


@pytest.mark.parametrize(
    ("mask", "types"),
    [
        (IN_CREATE, ["create"]),
        (IN_MOVED_TO, ["create"]),
        (IN_CREATE | IN_ISDIR, ["create"]),
        (IN_MOVED_FROM, ["rename"]),
        (IN_MOVE_SELF, ["rename"]),
        (IN_ATTRIB, ["chmod"]),
        (IN_MODIFY, ["write"]),
        (IN_DELETE, ["remove"]),
        (IN_DELETE_SELF, ["remove"]),
        (IN_CREATE | IN_ATTRIB | IN_MODIFY, ["create", "chmod", "write"]),  # fsnotify's order
        (0x8, []),  # IN_CLOSE_WRITE: not reported
    ],
)
def test_event_types_as_fsnotify(mask: int, types: list[str]) -> None:
    assert event_types(mask) == types


def test_parse_events_reads_padded_names() -> None:
    def raw(wd: int, mask: int, name: bytes) -> bytes:
        padded = name + b"\0" * (16 - len(name) % 16) if name else b""
        return struct.pack("iIII", wd, mask, 0, len(padded)) + padded

    buf = raw(1, IN_CREATE, b"f.txt") + raw(2, IN_DELETE_SELF, b"") + raw(1, IN_MODIFY, b"\xff\xfe")
    expected = [(1, IN_CREATE, "f.txt"), (2, IN_DELETE_SELF, ""), (1, IN_MODIFY, "\udcff\udcfe")]
    assert parse_events(buf) == expected
    assert parse_events(buf[:10]) == []  # a truncated header is ignored, never misread
