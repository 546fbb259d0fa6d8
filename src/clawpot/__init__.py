"""Clawpot: run untrusted code in lightweight microVMs.

Package map (each subpackage's ``__init__`` says more):

- ``clawpot.assets``  guest kernel, root filesystem, guest init, Firecracker binary: build, verify, install.
- ``clawpot.vmm``     the VMM interface (start, attach, stop, kill, pause, resume, snapshot, restore +
                      capability flags) and its backends: Firecracker and QEMU microvm.
- ``clawpot.vm``      one VM's handle (booted or attached), its state machine, the boot recipe with undo.
- ``clawpot.agent``   the in-guest agent and its wire protocol (standard library only: it runs in the guest).
- ``clawpot.agent_client`` the host side of the agent channel (was ``guest``): exec, files, configure.
- ``clawpot.network`` bridge, TAP devices, IP allocation, NAT.
- ``clawpot.node``    the node runtime, what one host runs: store, network, backends, VM handles, agent
                      links, health, reconcile at start. A plain async interface, no gRPC.
- ``clawpot.service`` what answers the API: validation, defaults, admission, placement on the node.
- ``clawpot.server``  the gRPC front: servicer (translate only), listeners, auth, process wiring.
- ``clawpot.cli``     the ``clawpot`` and ``clawpot-driver`` commands.
- ``clawpot.limits``  every default and bound (VM shape, request sizes, guest-facing budgets), one source.
- ``clawpot.errors``  the error kinds the service and the node raise; the servicer maps each to a status.
"""

__version__ = "0.1.0"
