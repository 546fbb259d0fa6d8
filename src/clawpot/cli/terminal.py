"""Text from a server or a guest, made safe to print on the operator's terminal.

A guest controls much of what the CLI prints (agent error messages, serial-console tails inside VM
errors) and a server controls the rest. Printed raw, an escape sequence in it could retitle the
window, clear the screen, move the cursor to overwrite earlier lines, plant an OSC 8 hyperlink or
write to the clipboard (OSC 52). ``safe`` makes every control character visible instead of
interpreted: C0 controls (``ESC`` included), DEL, C1 controls (the 8-bit CSI/OSC/DCS), carriage
return, and the Unicode bidirectional overrides that reorder what is shown. Without an ``ESC`` or C1
introducer no sequence can start, so no parser of CSI/OSC grammar is needed; the printable rest of a
sequence stays visible for the operator to see. Other Unicode (accents, CJK, emoji and their joiners)
is kept.

Exec's stdout and stderr never go through here: they are the user's data, passed through byte-exact.
"""

from __future__ import annotations

import re

# C0 (0x00-0x1f) and DEL, C1 (0x80-0x9f), the bidi embeddings/overrides/isolates and marks, the
# Unicode line and paragraph separators, and lone surrogates (undecodable bytes).
_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)
_NAMED = {"\t": "\\t", "\r": "\\r", "\n": "\\n", "\x1b": "\\e"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def safe(text: str, *, multiline: bool = False) -> str:
    """``text`` with every control character escaped (``\\e``, ``\\x9b``, ``\\u202e``...).

    ``multiline=True`` keeps ``\\n`` as a line break (for text that is printed as several lines);
    everything else, ``\\r`` included, is always escaped.
    """
    if multiline:
        return "\n".join(_UNSAFE.sub(_escape, line) for line in text.split("\n"))
    return _UNSAFE.sub(_escape, text)
