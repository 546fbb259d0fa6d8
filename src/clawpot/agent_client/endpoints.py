"""How to reach a VM's agent from the host: one value per channel kind.

A VMM backend hands one of these out for each VM; the client in ``clawpot.agent_client`` connects to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from clawpot.agent.protocol import AGENT_VSOCK_PORT


@dataclass(frozen=True)
class HybridVsockEndpoint:
    """Firecracker's vsock: a unix socket on the host; the client sends ``CONNECT <port>\\n``."""

    uds_path: Path
    port: int = AGENT_VSOCK_PORT


@dataclass(frozen=True)
class SerialSocketEndpoint:
    """QEMU virtio-serial port backed by a unix-socket chardev (QEMU listens, we connect).

    Only one host connection at a time is served by QEMU, so the host keeps exactly one per VM.
    """

    path: Path


@dataclass(frozen=True)
class VsockEndpoint:
    """Kernel AF_VSOCK (QEMU with vhost-vsock on a real KVM host)."""

    cid: int
    port: int = AGENT_VSOCK_PORT


@dataclass(frozen=True)
class UnixSocketEndpoint:
    """A plain unix socket the agent listens on itself (``--listen-unix``): tests and benchmarks."""

    path: Path


AgentEndpoint = HybridVsockEndpoint | SerialSocketEndpoint | VsockEndpoint | UnixSocketEndpoint


def describe(endpoint: AgentEndpoint) -> str:
    """One human-readable phrase naming the endpoint, for error messages and logs."""
    match endpoint:
        case HybridVsockEndpoint(uds_path=path, port=port):
            return f"hybrid vsock {path} port {port}"
        case SerialSocketEndpoint(path=path):
            return f"serial socket {path}"
        case VsockEndpoint(cid=cid, port=port):
            return f"vsock cid {cid} port {port}"
        case UnixSocketEndpoint(path=path):
            return f"unix socket {path}"
