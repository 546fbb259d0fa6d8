"""The QEMU ``microvm`` backend: KVM where it boots guests, TCG software emulation otherwise.

- ``cmdline``  the ``qemu-system-x86_64 -M microvm`` argv for a ``VmSpec`` (pure) and the TCG boot args.
- ``qmp``      control over QMP via ``qemu.qmp``: status, ACPI power button, quit (``QmpError``).
- ``boot``     ``QEMU_BOOT``: the default boot recipe, one named step per line (edit a copy for a variant).
- ``process``  ``QemuProcess``: runs its recipe (spawn through ``clawpot.vmm.spawn``, wait for the guest
               CPU to run), stop, reap.
- ``backend``  ``QemuBackend``: binary lookup, accelerator and agent-transport choice, ``prepare``.
- ``facts``    ``qemu_facts``: a running VM's state, size, version and accelerator, for status reports.

The accelerator probe lives in ``clawpot.vmm.probe`` (it is about the host, not about QEMU only).
Errors are ``clawpot.vmm.base.VmmError`` subclasses; ``qmp.QmpError`` is the only one added here.
"""
