"""Names and MAC addresses derived from a VM: stable, short, and recognisable as Clawpot's.

Linux interface names hold at most 15 characters (IFNAMSIZ 16 with the NUL), so a TAP cannot carry
the VM id itself: it carries a hash of it. Reconcile recognises Clawpot's TAPs by the exact shape
``<prefix><hex>`` filling all 15 characters, never by a loose prefix match.
"""

from __future__ import annotations

import hashlib
import re
from ipaddress import IPv4Address

IFNAMSIZ_MAX = 15
# Locally administered (bit 1 of the first octet), unicast (bit 0 clear): never a vendor's MAC.
MAC_PREFIX = (0x06, 0x00)
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


def valid_ifname(name: str) -> bool:
    return 0 < len(name) <= IFNAMSIZ_MAX and name not in (".", "..") and bool(_IFNAME_RE.match(name))


def tap_hex_len(prefix: str) -> int:
    return IFNAMSIZ_MAX - len(prefix)


def tap_name_for(vm_id: str, prefix: str) -> str:
    """``cp-`` + the first hex digits of sha256(vm_id), filling the 15 characters Linux allows."""
    digest = hashlib.sha256(vm_id.encode("utf-8")).hexdigest()
    return prefix + digest[: tap_hex_len(prefix)]


def tap_name_pattern(prefix: str) -> re.Pattern[str]:
    return re.compile(rf"^{re.escape(prefix)}[0-9a-f]{{{tap_hex_len(prefix)}}}$")


def mac_for_address(address: IPv4Address) -> str:
    """06:00 followed by the four octets of the address, e.g. 192.168.100.2 -> 06:00:c0:a8:64:02."""
    return ":".join(f"{octet:02x}" for octet in (*MAC_PREFIX, *address.packed))
