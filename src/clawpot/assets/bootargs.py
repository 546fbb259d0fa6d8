"""The guest kernel command line, for every backend.

The parameters the guest init reads (``clawpot.*``) are documented in ``guest/clawpot-init``.
``pci=off``: Firecracker has no PCI bus and QEMU microvm is run without one; devices are virtio-mmio.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

BASE_ARGS = "console=ttyS0 reboot=k panic=1 pci=off init=/sbin/clawpot-init root=/dev/vda ro rootfstype=ext4"
# Under TCG the TSC calibration misbehaves and the boot hangs after "Marking TSC unstable".
TCG_ARGS = "tsc_early_khz=2000000 lpj=4000000 no_timer_check"


@dataclass(frozen=True)
class GuestIp:
    """Static address of one guest interface, applied by the kernel (``ip=``) before init runs."""

    address: str
    gateway: str
    netmask: str = "255.255.255.0"
    iface: str = "eth0"

    def __post_init__(self) -> None:
        for name in ("address", "gateway", "netmask"):
            try:
                ipaddress.IPv4Address(getattr(self, name))
            except ValueError as exc:
                raise ValueError(f"GuestIp.{name}: {exc}") from None
        _check_word("GuestIp.iface", self.iface)


def _check_word(what: str, value: str) -> None:
    # The kernel splits its command line on spaces and ip= on colons.
    if not value or any(c.isspace() or c in ":\"'" for c in value):
        raise ValueError(f"{what} must be non-empty without spaces, quotes or colons: {value!r}")


def guest_cmdline(
    *,
    overlay_device: str | None,
    hostname: str | None = None,
    ip: GuestIp | None = None,
    dns: str | None = None,
    tcg: bool = False,
    extra: str = "",
) -> str:
    """Kernel command line for a Clawpot guest.

    ``overlay_device`` is the guest device of the per-VM writable disk (e.g. ``/dev/vdb``); None boots
    the base image directly. ``dns`` is one nameserver or several separated by commas. ``tcg`` adds
    the timer options QEMU needs without KVM.
    """
    args = [BASE_ARGS]
    if overlay_device is not None:
        _check_word("overlay_device", overlay_device)
        args.append(f"clawpot.overlay={overlay_device}")
    if hostname is not None:
        _check_word("hostname", hostname)
        args.append(f"clawpot.hostname={hostname}")
    if ip is not None:
        args.append(f"ip={ip.address}::{ip.gateway}:{ip.netmask}:{hostname or ''}:{ip.iface}:off")
    if dns is not None:
        for server in dns.split(","):
            ipaddress.ip_address(server)
        args.append(f"clawpot.dns={dns}")
    if tcg:
        args.append(TCG_ARGS)
    if extra.strip():
        args.append(extra.strip())
    return " ".join(args)
