"""E2B's snapshots over Clawpot's named snapshots: ids, what a snapshot remembers of its sandbox, paging.

- A snapshot id is E2B's "template id with tag": ``<clawpot snapshot name>:default``. The bare name
  (what ``clawpot snapshot list`` shows) is accepted wherever an id is, and so is any tag E2B gives
  a single build (``default``, ``latest``); anything else does not name a snapshot.
- ``POST /sandboxes`` with a snapshot id as ``templateID`` restores it (E2B's ``Sandbox.create(id)``).
- What the snapshot holds of E2B's side is its sandbox's memory, so envd's default environment
  (``envVars``) comes with it; the E2B layer records it, with the source sandbox's id (the
  ``sandboxID`` filter of ``GET /snapshots``), in ``e2b-source.json`` inside the snapshot's
  directory (0600), which lives and dies with the snapshot. It is read bounded; a damaged one is
  ignored (a half-written one after a crash, too).
- ``GET /snapshots`` pages oldest first with ``limit`` and ``nextToken`` (``X-Next-Token`` header),
  the token naming the last snapshot sent (creation time, name), as VM listings do.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clawpot import errors, limits
from clawpot.e2b.rest import listing
from clawpot.node.snapshots import SnapshotInfo
from clawpot.service import validate

log = logging.getLogger(__name__)

SOURCE_FILE = "e2b-source.json"
TAG = "default"
_SINGLE_BUILD_TAGS = frozenset({TAG, "latest"})


def snapshot_id(name: str) -> str:
    return f"{name}:{TAG}"


def name_of(value: str) -> str | None:
    """The Clawpot snapshot name an E2B snapshot id (or bare name) names; None if it cannot name one."""
    name, _, tag = value.partition(":")
    if tag and tag not in _SINGLE_BUILD_TAGS:
        return None
    try:
        validate.snapshot_name(name)
    except errors.InvalidArgument:
        return None
    return name


def new_name(requested: str | None) -> str:
    """The name a new snapshot gets: the one asked for (validated, an E2B tag dropped), or a fresh one."""
    if not requested:
        return f"snap-{secrets.token_hex(8)}"
    name = name_of(requested)
    if name is None:
        raise errors.InvalidArgument(
            f"invalid snapshot name {errors.quote(requested)}: 1-{limits.MAX_SNAPSHOT_NAME_CHARS} "
            "letters, digits, '.', '-' or '_', starting with a letter or digit"
        )
    return name


def info_body(name: str) -> dict[str, Any]:
    """``SnapshotInfo`` as the SDK parses it."""
    return {"snapshotID": snapshot_id(name), "names": [snapshot_id(name)]}


@dataclass(frozen=True)
class Source:
    """What a snapshot remembers of the sandbox it was taken from."""

    sandbox_id: str
    env_vars: dict[str, str] = field(default_factory=dict)


def save_source(directory: Path, source: Source) -> None:
    """Written once, beside the snapshot's files, 0600: the env vars may hold secrets."""
    data = json.dumps({"sandbox_id": source.sandbox_id, "env_vars": source.env_vars}, sort_keys=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    with os.fdopen(os.open(directory / SOURCE_FILE, flags, 0o600), "w") as f:
        f.write(data)


def load_source(directory: Path) -> Source | None:
    try:
        with (directory / SOURCE_FILE).open("rb") as f:
            raw = f.read(limits.E2B_ATTRS_MAX_BYTES + 1)
    except OSError:
        return None  # taken through gRPC or the CLI: no E2B source
    try:
        if len(raw) > limits.E2B_ATTRS_MAX_BYTES:
            raise ValueError("too large")
        data = json.loads(raw)
        return Source(
            sandbox_id=str(data["sandbox_id"]),
            env_vars={str(k): str(v) for k, v in data["env_vars"].items()},
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("snapshot %s: %s is damaged (%s); ignored", directory.name, SOURCE_FILE, exc)
        return None


@dataclass(frozen=True)
class Query:
    sandbox_id: str | None = None
    name: str | None = None
    limit: int = limits.E2B_MAX_PAGE_SIZE
    after: tuple[float, str] | None = None


def parse_query(params: Any) -> Query:
    name = params.get("name") or None
    return Query(
        sandbox_id=params.get("sandboxID") or None,
        # A name that cannot be a snapshot's matches none (not an error: E2B filters, it does not judge).
        name=(name_of(name) or "\0") if name else None,
        limit=listing.page_limit(params.get("limit")),
        after=listing.decode_token(params["nextToken"]) if params.get("nextToken") else None,
    )


def select(
    found: list[tuple[SnapshotInfo, Source | None]], query: Query
) -> tuple[list[SnapshotInfo], str | None]:
    """One page of snapshots matching ``query``, oldest first, and the next page's token."""

    def key(info: SnapshotInfo) -> tuple[float, str]:
        return (info.created_at, info.name)

    matching = sorted(
        (
            info
            for info, source in found
            if (query.name is None or info.name == query.name)
            and (query.sandbox_id is None or (source is not None and source.sandbox_id == query.sandbox_id))
        ),
        key=key,
    )
    if query.after is not None:
        cursor = query.after
        matching = [i for i in matching if key(i) > cursor]
    page = matching[: query.limit]
    token = listing.encode_token(*key(page[-1])) if len(matching) > query.limit else None
    return page, token
