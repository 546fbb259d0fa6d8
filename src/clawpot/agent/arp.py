"""Gratuitous ARP: announce "this IPv4 address is at this MAC" to the link, in one broadcast frame.

After ``configure`` changes a guest's MAC or address (or after a restore puts the VM behind a new TAP),
the host bridge learns which port the MAC is on, and every neighbour that has the address in its ARP
cache updates it at once, instead of sending to the old pair until its entry expires. It is an ARP
request whose sender and target address are both ours (RFC 5227 §3 calls it an ARP announcement).
A raw AF_PACKET socket needs CONFIG_PACKET, which the guest kernel has.
"""

from __future__ import annotations

import socket
import struct

from .netlink import mac_bytes

ETH_P_ARP = 0x0806
ETH_P_IP = 0x0800
ARP_REQUEST = 1
_BROADCAST = b"\xff" * 6
_ARP = struct.Struct("!HHBBH6s4s6s4s")  # htype, ptype, hlen, plen, op, sha, spa, tha, tpa
_MIN_FRAME = 60  # Ethernet minimum without the FCS


def announcement(mac: str, ip: str) -> bytes:
    sha, spa = mac_bytes(mac), socket.inet_aton(ip)
    arp = _ARP.pack(1, ETH_P_IP, 6, 4, ARP_REQUEST, sha, spa, b"\0" * 6, spa)
    frame = _BROADCAST + sha + struct.pack("!H", ETH_P_ARP) + arp
    return frame.ljust(_MIN_FRAME, b"\0")


def packet_socket() -> socket.socket:
    """A raw packet socket for ``announce``. Keep it: closing one waits for an RCU grace period
    (milliseconds). Protocol 0: it receives nothing, so nothing is ever queued on it."""
    return socket.socket(socket.AF_PACKET, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)


def announce(sock: socket.socket, interface: str, mac: str, ip: str) -> None:
    """Send one announcement on ``interface``; OSError when it cannot be sent."""
    sock.sendto(announcement(mac, ip), (interface, ETH_P_ARP))
