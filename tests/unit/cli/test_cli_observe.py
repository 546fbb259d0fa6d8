"""`clawpot logs`' text filter: console bytes → text safe for a terminal, chunk boundaries anywhere."""

from __future__ import annotations

from clawpot.cli.observe import ConsoleText


def _through(chunks: list[bytes]) -> str:
    text = ConsoleText()
    return "".join(text.feed(c) for c in chunks) + text.feed(b"", final=True)


def test_crlf_becomes_lf_and_escapes_are_shown_even_when_split() -> None:
    data = "boot ok\r\nélan \x1b]0;title\x07 ✓\r\n".encode()
    expected = "boot ok\nélan \\e]0;title\\x07 ✓\n"
    assert _through([data]) == expected
    for cut in range(1, len(data)):  # every place a chunk can end: inside \r\n, inside a UTF-8 sequence
        assert _through([data[:cut], data[cut:]]) == expected, cut


def test_a_lone_cr_and_bad_bytes_are_visible() -> None:
    assert _through([b"50%\r100%\n"]) == "50%\\r100%\n"
    assert _through([b"a\xffb\r"]) == "a\ufffdb\\r"
