"""``printable`` and ``LogLimiter``: guest text made safe for the host's log."""

from __future__ import annotations

import logging

import pytest

from clawpot.agent_client.untrusted import LogLimiter, limiter_for, printable


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain text, ünïcode", "plain text, ünïcode"),
        ("\x1b]0;title\x07\x1b[2J", "\\x1b]0;title\\x07\\x1b[2J"),
        ("two\nlines\r\n", "two\\nlines\\r\\n"),
        ("rtl \u202e override, \u2028 separator", "rtl \\u202e override, \\u2028 separator"),
        ("a forged \\x1b stays visible", "a forged \\\\x1b stays visible"),
        (b"bytes \xff\xfe and \xc3\xa9", "bytes \\xff\\xfe and é"),
    ],
)
def test_printable_escapes(text: str | bytes, shown: str) -> None:
    assert printable(text) == shown


def test_printable_cuts_long_text_without_reading_it_all() -> None:
    out = printable("x" * 10_000_000, 50)
    assert out == "x" * 50 + "... (9999950 more)"
    escaped = printable("\x1b" * 1000, 20)
    assert escaped.startswith("\\x1b" * 5 + "...") and len(escaped) < 40
    assert printable(b"y" * 5_000_000, 10).startswith("y" * 10 + "... (")


def test_log_limiter_bursts_then_counts(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    limiter = LogLimiter(burst=3, per_second=1.0, clock=lambda: now[0])
    logger = logging.getLogger("clawpot.agent_client.test")
    with caplog.at_level(logging.INFO, logger="clawpot.agent_client.test"):
        for i in range(100):
            limiter.log(logger, logging.INFO, "line %d", i)
        now[0] += 2.5  # two tokens back
        limiter.log(logger, logging.INFO, "later")
    assert [r.getMessage() for r in caplog.records] == [
        "line 0",
        "line 1",
        "line 2",
        "97 messages suppressed (rate limit on guest-supplied text)",
        "later",
    ]


def test_limiter_is_per_key() -> None:
    assert limiter_for("vm-a") is limiter_for("vm-a")
    assert limiter_for("vm-a") is not limiter_for("vm-b")
