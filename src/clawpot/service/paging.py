"""ListVms pages (AIP-158): a page of VMs in creation order and an opaque token for the next one.

The token names the last VM a page held (its creation time and id), not an offset: VMs created or
deleted between two calls neither repeat nor push others out of the listing.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from typing import TypeVar

from clawpot import limits
from clawpot.errors import InvalidArgument, quote

T = TypeVar("T")
SortKey = tuple[float, str]  # (created_at, id)


def page_size(requested: int) -> int:
    """0 means the server's default; anything above the maximum is lowered to it."""
    if requested < 0:
        raise InvalidArgument(f"page_size must be >= 0, got {requested}")
    return min(requested or limits.DEFAULT_PAGE_SIZE, limits.MAX_PAGE_SIZE)


def encode_token(key: SortKey) -> str:
    return base64.urlsafe_b64encode(json.dumps([key[0], key[1]]).encode()).decode()


def decode_token(token: str) -> SortKey:
    try:
        if len(token) > 512:
            raise ValueError("too long")
        created_at, vm_id = json.loads(base64.urlsafe_b64decode(token.encode("ascii")))
        if not isinstance(created_at, int | float) or not isinstance(vm_id, str):
            raise ValueError("wrong types")
    except (ValueError, TypeError, binascii.Error, UnicodeEncodeError):
        raise InvalidArgument(f"invalid page_token {quote(token)}") from None
    return float(created_at), vm_id


def page(items: Sequence[T], key: Callable[[T], SortKey], size: int, token: str) -> tuple[list[T], str]:
    """The ``size`` items after ``token`` in ``key`` order, and the token for the rest ('' at the end)."""
    ordered = sorted(items, key=key)
    if token:
        after = decode_token(token)
        ordered = [item for item in ordered if key(item) > after]
    chosen = ordered[:size]
    rest = len(ordered) > size
    return chosen, encode_token(key(chosen[-1])) if rest and chosen else ""
