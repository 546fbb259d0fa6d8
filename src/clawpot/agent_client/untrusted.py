"""Guest-supplied text on its way into host logs and messages: shortened, escaped and rate-limited.

The guest is untrusted (docs/security.md). Anything it says (an agent's error message, a reason in a
REJECT line) may be megabytes long, may hold terminal escape sequences or newlines that forge log lines,
and may come thousands of times a second. ``printable`` makes one piece of such text safe to show;
``LogLimiter`` bounds how many lines one VM may put in the log.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable

from clawpot.limits import AGENT_LOG_BURST, AGENT_LOG_PER_S, AGENT_LOG_TEXT_CHARS

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def _escape(ch: str) -> str:
    if ch in _NAMED:
        return _NAMED[ch]
    if ch.isprintable():
        return ch
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # an invalid byte kept by surrogateescape
        return f"\\x{code - 0xDC00:02x}"
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def printable(text: str | bytes, limit: int = AGENT_LOG_TEXT_CHARS) -> str:
    """``text`` as one safe line of at most about ``limit`` characters.

    Control characters, escape sequences, line and paragraph separators and other unprintable code points
    become Python-style escapes (``\\x1b``, ``\\n``, ``\\u2028``); a backslash is doubled so an escape
    cannot be forged. Longer text is cut and says how much was left out. Bytes are decoded as UTF-8, an
    invalid byte shown as ``\\xNN``. The work done is bounded by ``limit``, not by the input's size.
    """
    more = 0
    if isinstance(text, bytes | bytearray | memoryview):
        raw = bytes(text[: 4 * limit + 4])
        more = len(text) - len(raw)
        text = raw.decode("utf-8", errors="surrogateescape")  # invalid bytes: U+DC80..U+DCFF
    pieces = [_escape(ch) for ch in text[: limit + 1]]
    out: list[str] = []
    used = 0
    for consumed, piece in enumerate(pieces):
        if used + len(piece) > limit:
            left = len(text) - consumed + more
            return "".join(out) + f"... ({left} more)"
        out.append(piece)
        used += len(piece)
    return "".join(out)


class TokenBucket:
    """``burst`` events at once, then ``per_second``: ``allow`` says whether one more fits, and counts
    the ones that did not in ``refused``."""

    def __init__(self, burst: int, per_second: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.burst = burst
        self.per_second = per_second
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()
        self.refused = 0

    def allow(self) -> bool:
        now = self._clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.per_second)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        self.refused += 1
        return False


class LogLimiter(TokenBucket):
    """Log lines within a token bucket; the rest is counted.

    ``log`` writes a line when a token is left; otherwise it counts the line, and the next line that gets
    through is preceded by one "N messages suppressed" line.
    """

    def __init__(
        self,
        burst: int = AGENT_LOG_BURST,
        per_second: float = AGENT_LOG_PER_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(burst, per_second, clock)

    def log(self, logger: logging.Logger, level: int, msg: str, *args: object) -> None:
        """``logger.log(level, msg, *args)`` within the rate; args should already be ``printable``."""
        if not logger.isEnabledFor(level) or not self.allow():
            return
        if self.refused:
            logger.log(level, "%d messages suppressed (rate limit on guest-supplied text)", self.refused)
            self.refused = 0
        logger.log(level, msg, *args)


_MAX_LIMITERS = 4096
_limiters: OrderedDict[str, LogLimiter] = OrderedDict()


def limiter_for(key: str) -> LogLimiter:
    """The limiter of one VM, keyed by something stable across reconnects (its agent endpoint), so a guest
    cannot reset its budget by getting its connection dropped. Kept for the most recent 4096 keys."""
    limiter = _limiters.get(key)
    if limiter is None:
        limiter = _limiters[key] = LogLimiter()
        if len(_limiters) > _MAX_LIMITERS:
            _limiters.popitem(last=False)
    else:
        _limiters.move_to_end(key)
    return limiter
