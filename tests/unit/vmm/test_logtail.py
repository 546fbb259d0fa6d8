"""The bounded log-tail reader: never more than N bytes, no cut first line, nothing unprintable."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

from clawpot.vmm.logtail import printable, tail_lines, tail_text


def test_a_small_file_is_read_whole(tmp_path: Path) -> None:
    log = tmp_path / "log"
    log.write_bytes(b"one\ntwo\n\tthree\n")
    assert tail_lines(log, 1024) == ["one", "two", "\tthree"]
    assert tail_text(log, 1024) == "one\ntwo\n\tthree"


def test_only_the_end_is_read_and_a_cut_line_is_dropped(tmp_path: Path) -> None:
    log = tmp_path / "log"
    with open(log, "wb") as f:
        for number in range(200_000):  # ~2.5 MB
            f.write(b"line %07d of the log\n" % number)
    tracemalloc.start()
    try:
        lines = tail_lines(log, 100)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # 100 bytes hold the last 4 whole lines (21 bytes each) and a piece of a fifth, which is dropped.
    assert lines == [f"line {n:07d} of the log" for n in range(199_996, 200_000)]
    assert peak < 64 * 1024  # the file was not read whole
    assert tail_lines(log, 10) == []  # no whole line fits: nothing rather than half a line


def test_unprintable_guest_text_is_removed(tmp_path: Path) -> None:
    console = tmp_path / "serial.log"
    console.write_bytes(
        b"\x1b]0;owned\x07title\r\n"  # OSC: retitle the terminal
        b"\x1b[2Jclear \x9b\xe2\x80\xaeevil\n"  # CSI clear screen, a C1 CSI (invalid UTF-8), RTL override
        b"bad utf-8 \xff\xfe ok\n"
        b"kept\ttab\n"
    )
    lines = tail_lines(console, 4096)
    assert lines == [
        "]0;ownedtitle",
        "[2Jclear \ufffdevil",
        "bad utf-8 \ufffd\ufffd ok",
        "kept\ttab",
    ]
    assert all(line.replace("\t", "").isprintable() for line in lines)


def test_unreadable_or_empty_bounds_give_nothing(tmp_path: Path) -> None:
    assert tail_lines(tmp_path / "missing", 1024) == []
    assert tail_text(tmp_path / "missing", 1024) == ""
    (tmp_path / "dir").mkdir()
    assert tail_lines(tmp_path / "dir", 1024) == []
    (tmp_path / "log").write_text("x\n")
    assert tail_lines(tmp_path / "log", 0) == []


def test_printable_keeps_clean_text_as_is() -> None:
    text = "Linux version 6.1 (gcc) #1 SMP"
    assert printable(text) is text
    assert printable("a\x00b\x7fc\u200bd") == "abcd"
