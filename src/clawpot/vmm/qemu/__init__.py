"""The QEMU ``microvm`` backend: KVM where it boots guests, TCG software emulation otherwise.

- ``cmdline``  the ``qemu-system-x86_64 -M microvm`` argv for a ``VmSpec`` (pure), guest RAM backing
               (``RamBacking``: a shared memfd, or a snapshot's memory mapped privately), TCG boot args.
- ``qmp``      control over QMP: status, ACPI power button, quit, commands with a passed fd; for the
               server one kept connection per QEMU (events drained, deadlines, reconnect) (``QmpError``).
- ``boot``     ``QEMU_BOOT``: the default boot recipe, one named step per line (edit a copy for a variant);
               ``QEMU_RESTORE``: the same with verify, copy the writable layer, load the snapshot, cont.
- ``snapshots`` pause/snapshot/restore with QEMU 7.2: migration to an fd with ``x-ignore-shared``, the
               RAM memfd and writable layer copied; what 7.2 allows and what it does not.
- ``confine``  QEMU without root: exec'd as ``clawpot-vmm`` by ``setpriv`` (CAP_SYS_CHROOT only), its own
               ``-chroot``, its sockets, drives, TAPs, kernel and RAM file handed over as fds
               (``Handover``); why not ``-runas`` (7.2's seccomp kills it).
- ``process``  ``QemuProcess``: runs its recipe (spawn through ``clawpot.vmm.spawn``, wait for the guest
               CPU to run), stop, reap.
- ``backend``  ``QemuBackend``: binary lookup, accelerator and agent-transport choice, ``prepare``,
               ``restore``.
- ``attached`` ``AttachedQemu``: a QEMU left by an earlier server, paused and resumed over its QMP.
- ``facts``    ``qemu_facts``: a running VM's state, size, version and accelerator, for status reports.

The accelerator probe lives in ``clawpot.vmm.probe`` (it is about the host, not about QEMU only).
Errors are ``clawpot.vmm.base.VmmError`` subclasses; ``qmp.QmpError`` (and its ``QmpDisconnected``) is
the only one added here.
"""
