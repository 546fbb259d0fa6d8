"""Which guest user an envd request acts as: E2B's SDK names it in ``Authorization: Basic`` (the
username, empty password: ``base64("user:")``); without the header envd uses its default user."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping

from clawpot import limits

# A POSIX user name (what useradd accepts, bounded): anything else is refused before the guest sees it.
_MAX_NAME = 32


def username(headers: Mapping[str, str], default: str = limits.E2B_DEFAULT_USER) -> str:
    """The user named by the request, or ``default``; ValueError if malformed."""
    value = headers.get("authorization")
    if not value:
        return default
    scheme, _, encoded = value.partition(" ")
    if scheme.lower() != "basic":
        raise ValueError("the Authorization header must be Basic <base64 of 'user:'>")
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise ValueError("the Authorization header is not valid base64") from None
    name = decoded.partition(":")[0]
    return checked(name) if name else default


def checked(name: str) -> str:
    """``name`` if it is a user name the guest may be asked about; ValueError otherwise (also for the
    ``username`` query parameter of ``/files``)."""
    if len(name) > _MAX_NAME or not all(c.isalnum() or c in "._-" for c in name) or name.startswith("-"):
        raise ValueError(f"invalid user name {name[:_MAX_NAME]!r}")
    return name
