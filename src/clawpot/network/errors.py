"""The one root exception of ``clawpot.network`` and its tree.

NetworkError
├── NetworkConfigError      the configuration is unusable (subnet too small, bad names)
├── ToolMissing             a host tool or kernel feature is absent (message names the package)
├── AllocationError         the address pool refused a request
│   ├── AddressPoolExhausted    no free address left (the server maps it to RESOURCE_EXHAUSTED)
│   ├── AddressNotAllowed       requested address is malformed, outside the subnet or reserved
│   └── AddressInUse            requested address belongs to another VM
├── LinkError               a netlink operation on the bridge or a TAP failed
├── FirewallError           nft rejected or failed to apply Clawpot's ruleset
└── PortInUse               a published host port belongs to another VM (ALREADY_EXISTS)
"""

from __future__ import annotations


class NetworkError(Exception):
    """Root of every error raised by ``clawpot.network``."""


class NetworkConfigError(NetworkError):
    pass


class ToolMissing(NetworkError):
    pass


class AllocationError(NetworkError):
    pass


class AddressPoolExhausted(AllocationError):
    pass


class AddressNotAllowed(AllocationError):
    pass


class AddressInUse(AllocationError):
    def __init__(self, message: str, owner: str) -> None:
        super().__init__(message)
        self.owner = owner

    def __reduce__(self) -> tuple[type[AddressInUse], tuple[str, str]]:
        # Keeps the error intact across processes (pickle would otherwise drop ``owner``).
        return (type(self), (str(self.args[0]), self.owner))


class LinkError(NetworkError):
    pass


class FirewallError(NetworkError):
    pass


class PortInUse(NetworkError):
    """A ``--publish`` host address, protocol and port is already published by another VM."""
