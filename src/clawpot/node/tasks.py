"""Small asyncio helpers the node's lifecycle code shares."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def to_completion(work: Awaitable[T]) -> T:
    """Await ``work`` to its end even when the caller is cancelled meanwhile; the cancellation is
    delivered afterwards. For cleanup and for work that cannot be interrupted half-way (threads)."""
    task = asyncio.ensure_future(work)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done() and task.cancelled():
                raise
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return task.result()
