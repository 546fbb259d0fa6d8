"""Clawpot: run untrusted code in lightweight microVMs.

Package map (each subpackage's ``__init__`` says more):

- ``clawpot.assets``  guest kernel, root filesystem, guest init, Firecracker binary: build, verify, install.
- ``clawpot.vmm``     the VMM interface (spec, handle, states) and its backends: Firecracker and QEMU microvm.
- ``clawpot.vm``      one VM's life: per-VM directory, boot pipeline with undo, readiness.
- ``clawpot.agent``   the in-guest agent and its wire protocol (standard library only: it runs in the guest).
- ``clawpot.guest``   the host side of the agent channel: exec and file transfer clients.
- ``clawpot.network`` bridge, TAP devices, IP allocation, NAT.
- ``clawpot.server``  the gRPC service, its persistent store, reconcile at start.
- ``clawpot.cli``     the ``clawpot`` and ``clawpot-driver`` commands.
- ``clawpot.limits``  every default and bound (VM shape, request sizes, guest-facing budgets), one source.
"""

__version__ = "0.1.0"
