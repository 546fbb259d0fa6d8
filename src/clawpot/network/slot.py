"""``NetworkSlot``: everything one VM's networking is made of, derived from its id and address.

Like e2b's network slots: the TAP name comes from the VM id, the MAC from the address, and the
guest's configuration (address, netmask, gateway, DNS) from the subnet. Backends take
``slot.interface()``; the guest gets ``slot.kernel_ip_arg()`` on its command line.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from clawpot.network.config import NetworkConfig
from clawpot.network.ipam import Allocation
from clawpot.network.naming import mac_for_address, tap_name_for
from clawpot.vmm.spec import NetworkInterface


@dataclass(frozen=True)
class NetworkSlot:
    vm_id: str
    address: IPv4Address
    network: IPv4Network
    gateway: IPv4Address
    dns: tuple[IPv4Address, ...]
    tap_name: str
    mac: str
    bridge: str
    allow_peers: bool

    @classmethod
    def derive(
        cls, config: NetworkConfig, vm_id: str, address: IPv4Address, *, allow_peers: bool = False
    ) -> NetworkSlot:
        return cls(
            vm_id=vm_id,
            address=address,
            network=config.subnet,
            gateway=config.gateway,
            dns=config.dns_servers,
            tap_name=tap_name_for(vm_id, config.tap_prefix),
            mac=mac_for_address(address),
            bridge=config.bridge,
            allow_peers=allow_peers,
        )

    @classmethod
    def from_allocation(cls, config: NetworkConfig, allocation: Allocation) -> NetworkSlot:
        return cls.derive(config, allocation.vm_id, allocation.address, allow_peers=allocation.allow_peers)

    @property
    def netmask(self) -> IPv4Address:
        return self.network.netmask

    @property
    def prefixlen(self) -> int:
        return self.network.prefixlen

    @property
    def cidr(self) -> str:
        """The guest's address with its prefix, e.g. ``192.168.100.2/24``."""
        return f"{self.address}/{self.prefixlen}"

    def kernel_ip_arg(self, device: str = "eth0", hostname: str = "") -> str:
        """The kernel's ``ip=`` parameter (CONFIG_IP_PNP): static address, gateway, up to two DNS.

        Format ``ip=<client>:<server>:<gw>:<netmask>:<hostname>:<device>:<autoconf>:<dns0>:<dns1>``;
        the kernel writes the DNS servers to /proc/net/pnp, which init can link to /etc/resolv.conf.
        """
        if ":" in hostname or ":" in device:
            raise ValueError("hostname and device must not contain ':' (it separates ip= fields)")
        fields = [str(self.address), "", str(self.gateway), str(self.netmask), hostname, device, "off"]
        fields += [str(server) for server in self.dns[:2]]
        return "ip=" + ":".join(fields)

    def resolv_conf(self) -> str:
        return "".join(f"nameserver {server}\n" for server in self.dns)

    def interface(self, iface_id: str = "eth0") -> NetworkInterface:
        """The backend-neutral NIC (Firecracker network-interfaces, QEMU tap netdev)."""
        return NetworkInterface(tap_name=self.tap_name, mac=self.mac, iface_id=iface_id)
