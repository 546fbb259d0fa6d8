"""Virtual machine monitors behind one small interface.

- ``spec``         ``VmSpec``: what to boot (kernel, args, drives, vcpus, memory, NICs, agent channel).
- ``base``         ``VmmBackend`` (capabilities, prepare, attach, restore) / ``VmmProcess`` (start, stop,
                   kill, wait, detach, pause, resume, snapshot, exit info), ``Capabilities`` with
                   ``Feature`` flags and ``require``, ``AttachRecord``, and the ``VmmError`` tree.
- ``firecracker``  the Firecracker backend: API client, models, process.
- ``qemu``         the QEMU ``microvm`` backend: command line, QMP, process (KVM or TCG).
- ``console``      the guest's serial console as a size-capped, rotated file, read from a FIFO the VMM
                   writes (``CappedLog``, ``ConsoleWriter``).
- ``probe``        does this host's KVM boot stock guests? (cached per host kernel; an async entry point
                   for event loops)
- ``registry``     ``auto | firecracker | qemu`` → a backend.
- ``adopted``      ``AttachedProcess``: a VMM started by an earlier server, watched through a pidfd (the
                   default ``VmmBackend.attach``); takes its console back; ``kill_pid`` for orphans.
"""
