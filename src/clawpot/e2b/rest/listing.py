"""GET /sandboxes and GET /v2/sandboxes: E2B's filters and cursor paging over the node's VMs.

- ``metadata``: the SDK sends ``urlencode({quote(k): quote(v)})`` as one query value; every pair must
  match the sandbox's metadata exactly.
- ``state``: ``running,paused`` (comma-separated; both when absent).
- ``order``: by start time, ``desc`` (E2B's default) or ``asc``; ``startedAfter`` (RFC 3339);
  ``template``.
- paging: ``limit`` (1-100, default 100) and ``nextToken``; the next page's token comes back in the
  ``X-Next-Token`` header (the SDK reads ``x-next-token``), absent after the last page. The token is
  the (start time, id) of the last sandbox sent, so sandboxes created or deleted between pages neither
  repeat nor shift the pages.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from clawpot import errors, limits
from clawpot.e2b.context import Sandbox

STATES = frozenset({"running", "paused"})


@dataclass(frozen=True)
class Query:
    metadata: dict[str, str]
    states: frozenset[str]
    descending: bool = True
    started_after: float | None = None
    template: str | None = None
    limit: int = limits.E2B_MAX_PAGE_SIZE
    after: tuple[float, str] | None = None  # the cursor: (start time, id) of the last one sent


def parse_metadata(value: str | None) -> dict[str, str]:
    if not value:
        return {}
    try:
        pairs = urllib.parse.parse_qsl(value, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise errors.InvalidArgument(f"invalid metadata query {errors.quote(value)}") from None
    return {urllib.parse.unquote(k): urllib.parse.unquote(v) for k, v in pairs}


def parse_query(params: Mapping[str, str], *, v2: bool) -> Query:
    states = STATES
    if v2 and params.get("state"):
        states = frozenset(s.strip() for s in params["state"].split(",") if s.strip())
        if not states <= STATES:
            raise errors.InvalidArgument(
                f"invalid state filter {errors.quote(params['state'])}: running, paused"
            )
    elif not v2:
        states = frozenset({"running"})  # v1 lists running sandboxes only
    order = params.get("order", "desc")
    if order not in ("asc", "desc"):
        raise errors.InvalidArgument(f"invalid order {errors.quote(order)}: asc or desc")
    return Query(
        metadata=parse_metadata(params.get("metadata")),
        states=states,
        descending=order == "desc",
        started_after=_time(params.get("startedAfter")),
        template=params.get("template") or None,
        limit=page_limit(params.get("limit")) if v2 else limits.MAX_PAGE_SIZE * 1000,
        after=decode_token(params["nextToken"]) if v2 and params.get("nextToken") else None,
    )


def _time(value: str | None) -> float | None:
    if not value:
        return None
    try:
        stamp = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise errors.InvalidArgument(
            f"invalid startedAfter {errors.quote(value)}: RFC 3339 expected"
        ) from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=datetime.UTC)
    return stamp.timestamp()


def page_limit(value: str | None) -> int:
    if value is None:
        return limits.E2B_MAX_PAGE_SIZE
    try:
        limit = int(value)
    except ValueError:
        raise errors.InvalidArgument(f"invalid limit {errors.quote(value)}") from None
    if not 1 <= limit <= limits.E2B_MAX_PAGE_SIZE:
        raise errors.InvalidArgument(f"limit {limit} out of range: 1-{limits.E2B_MAX_PAGE_SIZE}")
    return limit


def encode_token(created_at: float, sandbox_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([created_at, sandbox_id]).encode()).decode()


def decode_token(token: str) -> tuple[float, str]:
    try:
        created_at, sandbox_id = json.loads(base64.urlsafe_b64decode(token.encode("ascii")))
        if isinstance(created_at, int | float) and isinstance(sandbox_id, str):
            return float(created_at), sandbox_id
    except (ValueError, TypeError, binascii.Error, UnicodeEncodeError):
        pass
    raise errors.InvalidArgument(f"invalid nextToken {errors.quote(token)}")


def select(
    sandboxes: Iterable[tuple[Sandbox, str]], query: Query
) -> tuple[list[tuple[Sandbox, str]], str | None]:
    """One page of (sandbox, state) matching ``query``, in its order, and the next page's token."""
    matching = [
        (sandbox, state)
        for sandbox, state in sandboxes
        if state in query.states
        and all(sandbox.attrs.metadata.get(k) == v for k, v in query.metadata.items())
        and (query.started_after is None or sandbox.view.record.created_at >= query.started_after)
        and (query.template is None or sandbox.attrs.template_id == query.template)
    ]

    def key(item: tuple[Sandbox, str]) -> tuple[float, str]:
        return (item[0].view.record.created_at, item[0].id)

    matching.sort(key=key, reverse=query.descending)
    if query.after is not None:
        cursor = query.after
        matching = [i for i in matching if (key(i) < cursor if query.descending else key(i) > cursor)]
    page = matching[: query.limit]
    token = encode_token(*key(page[-1])) if len(matching) > query.limit else None
    return page, token
