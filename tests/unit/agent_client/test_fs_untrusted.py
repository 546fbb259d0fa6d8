"""What the host accepts from the agent's filesystem answers: entries, events and JSON lines, checked."""

from __future__ import annotations

from typing import Any

import pytest

from clawpot import limits
from clawpot.agent_client import ProtocolError
from clawpot.agent_client.fs import LineReader, parse_entry, parse_event

GOOD: dict[str, Any] = {
    "name": "f",
    "path": "/f",
    "mode": 0o100644,
    "size": 1,
    "uid": 0,
    "gid": 0,
    "owner": "root",
    "group": "root",
    "mtime_ns": 1,
    "target": None,
    "target_mode": None,
}


def test_a_good_entry() -> None:
    entry = parse_entry(GOOD)
    assert (entry.name, entry.size, entry.effective_mode) == ("f", 1, 0o100644)


@pytest.mark.parametrize(
    "lie",
    [
        {"size": -1},
        {"size": "1"},
        {"mode": 1 << 20},
        {"uid": True},
        {"name": None},
        {"path": "x" * (limits.AGENT_FS_TEXT_MAX + 1)},
        {"owner": ["root"]},
        {"target": 5},
        {"mtime_ns": None},
    ],
)
def test_entry_lies_are_protocol_errors(lie: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError):
        parse_entry({**GOOD, **lie})


def test_undecodable_names_become_valid_utf8() -> None:
    entry = parse_entry({**GOOD, "name": "bad\udcff", "path": "/\ud800"})
    assert entry.name == "bad\ufffd" and entry.path == "/\ufffd"
    entry.name.encode("utf-8")  # what protobuf needs


def test_events_are_checked() -> None:
    assert parse_event({"name": "a", "type": "write"}).type == "write"
    with pytest.raises(ProtocolError):
        parse_event({"name": "a", "type": "explode"})
    with pytest.raises(ProtocolError):
        parse_event({"name": "a", "type": "create", "entry": {"name": "x"}})


def test_line_reader_joins_chunks_and_bounds_lines() -> None:
    lines = LineReader(limit=64)
    assert list(lines.feed(b'{"a": 1}\n{"b"')) == [{"a": 1}]
    assert lines.partial
    assert list(lines.feed(b": 2}\n")) == [{"b": 2}]
    with pytest.raises(ProtocolError):
        list(lines.feed(b"x" * 65))
    with pytest.raises(ProtocolError):
        list(LineReader().feed(b"[1, 2]\n"))
    with pytest.raises(ProtocolError):
        list(LineReader().feed(b"not json\n"))
