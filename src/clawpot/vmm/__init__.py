"""Virtual machine monitors behind one small interface.

- ``spec``         ``VmSpec``: what to boot (kernel, args, drives, vcpus, memory, NICs, agent channel).
- ``base``         ``VmmBackend`` (capabilities, prepare, attach, restore) / ``VmmProcess`` (start, stop,
                   kill, wait, detach, pause, resume, snapshot, exit info), ``Capabilities`` with
                   ``Feature`` flags and ``require``, ``AttachRecord``, and the ``VmmError`` tree.
- ``steps``        boot recipes: ``Step(name, run, undo)``, ``Recipe`` (ordered, edited by copy: replace,
                   insert_before/after, remove) and its runner with a run-once ``Cleanup`` stack. Each
                   backend's start is one, readable in one place:
                   ``firecracker.boot.FIRECRACKER_BOOT`` (write the configuration → prepare files →
                   create the cgroup → spawn firecracker → wait for the microVM to start; the default,
                   ``JAILED_BOOT``, prepares a jail and spawns it under the jailer instead) and
                   ``qemu.boot.QEMU_BOOT`` (validate → choose the accelerator → build the command line →
                   prepare files → create the cgroup → spawn qemu → wait until QMP says running).
- ``spawn``        ``spawn()`` → ``VmmChild``: how both backends start their process (own session,
                   optional parent-death signal, a pre-exec hook, pidfd exit watch, reaped and explained
                   at once); ``VmmChild.of_pid`` for a VMM a launcher handed over (the jailer's).
- ``logtail``      the one bounded reader of log and console tails (printable text only: the guest's
                   console is untrusted), for exit reasons and start failures.
- ``firecracker``  the Firecracker backend: API client, models, process, boot recipe.
- ``qemu``         the QEMU ``microvm`` backend: command line, QMP, process, boot recipe (KVM or TCG).
- ``console``      the guest's serial console as a size-capped, rotated file, read from a FIFO the VMM
                   writes (``CappedLog``, ``ConsoleWriter``).
- ``probe``        does this host's KVM boot stock guests? (cached per host kernel; an async entry point
                   for event loops)
- ``snapshot``     snapshot directories for every backend: ``SnapshotWriter`` (temporary directory, manifest
                   with sizes and digests, atomic rename), ``open_snapshot`` (verified before a restore:
                   ``SnapshotCorrupt`` / ``SnapshotIncompatible``), sparse and reflink copies.
- ``account``      ``vmm_account()``: the unprivileged user (``clawpot-vmm``) VMMs run as.
- ``cgroups``      per-VM cgroups (v2 or v1): CPU, memory (guest + measured overhead), tasks; joined before
                   exec or made by the jailer; an OOM kill named in the exit reason; removed with the VMM;
                   ``cgroup_paths(vm_id)`` for whoever reads a VM's CPU and memory use.
- ``registry``     ``auto | firecracker | qemu`` → a backend.
- ``adopted``      ``AttachedProcess``: a VMM started by an earlier server, watched through a pidfd (the
                   default ``VmmBackend.attach``); takes its console back; ``kill_pid`` for orphans.
"""
