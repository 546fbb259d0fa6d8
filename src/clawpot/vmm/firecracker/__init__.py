"""The Firecracker backend.

- ``models``   typed bodies of the Firecracker API (pydantic), one per resource
- ``client``   async API client over the unix socket (httpx); fault_message → ``FirecrackerApiError``
- ``process``  the firecracker OS process: output files, launch (``clawpot.vmm.spawn``), API socket
               deadline, exit reason
- ``boot``     ``FIRECRACKER_BOOT``: the boot recipe, one named step per line (edit a copy for a
               variant); ``FIRECRACKER_RESTORE``: a snapshot loaded instead; ``jailed(recipe)``: either
               under the jailer (``JAILED_BOOT``, ``JAILED_RESTORE``: the defaults)
- ``jail``     the jailer: a chroot in the VM directory (hard links, never copies), ``clawpot-vmm``, a
               PID namespace, the VM's cgroup; the steps that prepare it, launch it and take it down
- ``handle``   ``FirecrackerVmm`` (a ``VmmProcess``): runs its recipe (config file, API socket on),
               graceful stop
- ``snapshots`` pause, ``/snapshot/create`` and ``/snapshot/load``: what a KVM host gets, and what
               Firecracker >= 1.16 (``vsock_override``) would change
- ``backend``  ``FirecrackerBackend`` (a ``VmmBackend``): finds the binary, reports capabilities,
               ``restore``
- ``metrics``  Firecracker's own metrics: its FIFO, a bounded reader keeping the latest JSON document
               and running totals of ``COUNTERS`` (read by ``clawpot.metrics.collector``)
- ``attached`` ``AttachedFirecracker``: a firecracker an earlier server started, its console and
               metrics FIFO read again (``FirecrackerBackend.attach``)
- ``logwatch`` ``LogFollower``: waits for a line in firecracker's log (polls its end)
- ``errors``   ``FirecrackerError`` and its subclasses
"""
