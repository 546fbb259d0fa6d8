"""Netlink plumbing shared by the bridge and TAP modules: one ``IPRoute`` per operation, errors translated.

Everything goes through pyroute2's netlink API in the caller's network namespace; nothing parses
the output of ``ip``.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from clawpot.network.errors import LinkError


@dataclass(frozen=True)
class LinkInfo:
    index: int
    name: str
    kind: str | None
    master: int | None
    alias: str | None
    mac: str | None


@contextmanager
def iproute() -> Iterator[Any]:
    with netlink_errors("open a netlink socket"), IPRoute() as ipr:
        yield ipr


@contextmanager
def netlink_errors(action: str) -> Iterator[None]:
    """Turn a pyroute2/OS error into one ``LinkError`` line naming what was being done."""
    try:
        yield
    except NetlinkError as exc:
        raise LinkError(f"{action}: {_describe(exc.code)}") from None
    except OSError as exc:
        raise LinkError(f"{action}: {_describe(exc.errno or 0)}") from None


def _describe(code: int) -> str:
    text = os.strerror(code) if code else "unknown error"
    if code in (errno.EPERM, errno.EACCES):
        return f"{text} (needs root or CAP_NET_ADMIN)"
    return text


def _info(msg: Any) -> LinkInfo:
    linkinfo = msg.get_attr("IFLA_LINKINFO")
    return LinkInfo(
        index=int(msg["index"]),
        name=str(msg.get_attr("IFLA_IFNAME")),
        kind=linkinfo.get_attr("IFLA_INFO_KIND") if linkinfo is not None else None,
        master=msg.get_attr("IFLA_MASTER"),
        alias=msg.get_attr("IFLA_IFALIAS"),
        mac=msg.get_attr("IFLA_ADDRESS"),
    )


def list_links(ipr: Any) -> list[LinkInfo]:
    with netlink_errors("list network interfaces"):
        return [_info(msg) for msg in ipr.get_links()]


def find_link(ipr: Any, name: str) -> LinkInfo | None:
    """The link called exactly ``name``, or None."""
    with netlink_errors(f"look up interface {name}"):
        indexes = ipr.link_lookup(ifname=name)
        if not indexes:
            return None
        try:
            msgs = ipr.get_links(indexes[0])
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:  # deleted between the two calls
                return None
            raise
    return _info(msgs[0]) if msgs else None


def delete_link(ipr: Any, name: str) -> bool:
    """Delete the link called exactly ``name``; False if there was none."""
    link = find_link(ipr, name)
    if link is None:
        return False
    try:
        with netlink_errors(f"delete interface {name}"):
            ipr.link("del", index=link.index)
    except LinkError:
        if find_link(ipr, name) is None:  # someone else deleted it first
            return False
        raise
    return True
