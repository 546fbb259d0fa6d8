"""Virtual machine monitors behind one small interface.

- ``spec``         ``VmSpec``: what to boot (kernel, args, drives, vcpus, memory, NICs, agent channel).
- ``base``         ``VmmBackend`` / ``VmmProcess`` (start, stop, kill, wait, exit info), ``Capabilities``,
                   and the ``VmmError`` tree.
- ``firecracker``  the Firecracker backend: API client, models, process.
- ``qemu``         the QEMU ``microvm`` backend: command line, QMP, process (KVM or TCG).
- ``console``      the guest's serial console as a size-capped, rotated file, read from a FIFO the VMM
                   writes (``CappedLog``, ``ConsoleWriter``).
- ``probe``        does this host's KVM boot stock guests? (cached per host kernel)
- ``registry``     ``auto | firecracker | qemu`` → a backend.
- ``adopted``      a VMM process started by an earlier server, watched through a pidfd; takes its console
                   back.
"""
