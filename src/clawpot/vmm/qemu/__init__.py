"""The QEMU ``microvm`` backend: KVM where it boots guests, TCG software emulation otherwise.

- ``cmdline``  the ``qemu-system-x86_64 -M microvm`` argv for a ``VmSpec`` (pure) and the TCG boot args.
- ``qmp``      control over QMP via ``qemu.qmp``: status, ACPI power button, quit (``QmpError``).
- ``process``  ``QemuProcess``: spawn, wait for the guest CPU to run, pidfd exit watch, stop, reap.
- ``backend``  ``QemuBackend``: binary lookup, accelerator and agent-transport choice, ``prepare``.
- ``facts``    ``qemu_facts``: a running VM's state, size, version and accelerator, for status reports.

The accelerator probe lives in ``clawpot.vmm.probe`` (it is about the host, not about QEMU only).
Errors are ``clawpot.vmm.base.VmmError`` subclasses; ``qmp.QmpError`` is the only one added here.

``backend_from_options`` and ``kvm_boots_guests`` are the hooks ``clawpot.vmm.registry`` looks up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from clawpot.vmm.qemu.backend import QemuBackend
    from clawpot.vmm.registry import BackendOptions

# Imports happen inside the hooks: clawpot.vmm.probe imports this package's modules, so importing
# it (or the backend, which uses it) from here at import time would be circular.


def backend_from_options(options: BackendOptions) -> QemuBackend:
    from clawpot.vmm.qemu.backend import QemuBackend

    return QemuBackend(options.binary, qmp_socket=options.control_socket)


def kvm_boots_guests() -> bool:
    from clawpot.vmm.probe import kvm_boots_guests as probe_kvm

    return probe_kvm()
