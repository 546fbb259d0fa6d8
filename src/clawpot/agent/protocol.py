"""The agent wire contract, shared by the guest agent and the host client.

Standard library only: this module is copied into the guest with the rest of ``clawpot.agent``.
"""

from __future__ import annotations

# vsock port the agent listens on (Firecracker hybrid vsock: host sends "CONNECT 10051\n").
AGENT_VSOCK_PORT = 10051
# Name of the virtio-serial port carrying the agent channel under QEMU without vhost-vsock;
# the guest finds it by scanning /sys/class/virtio-ports/*/name.
SERIAL_PORT_NAME = "org.clawpot.agent.0"
# Printed once on the serial console when the agent is listening on every channel it found.
READY_LINE = "CLAWPOT-AGENT-READY"
