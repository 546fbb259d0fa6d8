"""DATA frames read straight from a descriptor: one reusable buffer, no copy of the bytes in Python.

The buffer is laid out as consecutive frames, each a header slot followed by a MAX_PAYLOAD slot.
``readv`` scatters what a pipe, PTY or file holds into the payload slots; the headers are packed in
between once the count is known, and the frames leave as one contiguous view. Before, each byte was
copied four times on its way out (a fresh read buffer, a slice per frame, header + payload, the join).

The link sends the view or copies what it cannot send before ``write_view`` returns (see links.py), so
the one buffer serves every session of the agent in turn: its size is the whole memory it costs.
"""

from __future__ import annotations

import os

from .protocol import HEADER, HEADER_SIZE, MAGIC, MAX_PAYLOAD, FrameType

_STRIDE = HEADER_SIZE + MAX_PAYLOAD
# Frames one read fills: 256 KiB, what an output pipe holds (execution.py sizes its pipes to match).
READ_FRAMES = 4


class OutFrames:
    def __init__(self, frames: int) -> None:
        self.capacity = frames * MAX_PAYLOAD  # payload bytes one read can take
        self._buf = bytearray(frames * _STRIDE)
        self._view = memoryview(self._buf)
        self._slots = [self._view[i * _STRIDE + HEADER_SIZE : (i + 1) * _STRIDE] for i in range(frames)]

    def read(self, fd: int, stream: int, pipe: int, limit: int) -> tuple[int, memoryview | None]:
        """Read up to ``limit`` bytes of ``fd`` (at most ``capacity``) as DATA frames of ``stream``/``pipe``.

        Returns the payload byte count and the encoded frames, valid until the next call (0 and None at
        end of file). Raises what ``os.read`` raises (BlockingIOError when nothing is there yet)."""
        if limit <= 0:
            raise ValueError("nothing to read into: the limit must be positive")
        full, part = divmod(min(limit, self.capacity), MAX_PAYLOAD)
        slots = self._slots[:full]
        if part:
            slots.append(self._slots[full][:part])
        n = os.readv(fd, slots)
        if n <= 0:
            return 0, None
        frames, last = divmod(n, MAX_PAYLOAD)
        for i in range(frames):
            HEADER.pack_into(self._buf, i * _STRIDE, MAGIC, FrameType.DATA, pipe, stream, MAX_PAYLOAD)
        if last:
            HEADER.pack_into(self._buf, frames * _STRIDE, MAGIC, FrameType.DATA, pipe, stream, last)
            return n, self._view[: frames * _STRIDE + HEADER_SIZE + last]
        return n, self._view[: frames * _STRIDE]
