"""The node runtime: what one host runs. A plain async interface (``Node``) that the service drives
today and a control plane could drive, one node per host, later. No gRPC here.

- ``node``        ``Node``: open / close, reserve + boot (or restore), delete, get, exec and files, pause /
                  resume, snapshot, list and delete snapshots.
- ``launch``      boot one reserved VM: network slot → guest identity → ``Vm.start`` → record Running;
                  or restore one: slot → ``Vm.start`` (restore steps) → identity via the agent → Running.
- ``snapshots``   ``SnapshotCatalog``: the named snapshots under <data>/snapshots (list, describe, remove).
- ``reconcile``   at start: attach VMs whose VMM runs (Running or Paused, as the VMM says), mark the
                  others Error, remove orphans.
- ``vms``         ``NodeVm``: record + ``Vm`` handle + agent link + tasks of one VM; ``VmView``.
- ``calls``       exec, upload, download in a Running VM through its agent link.
- ``agents``      ``AgentLink``: the one owner of a VM's agent connection, its time budgets and health.
- ``health``      what the node sees of each VM's agent (healthy / unresponsive / degraded), since when.
- ``sessions``    exec sessions and transfers under host deadlines.
- ``backends``    one VMM backend per kind; ``auto`` probed at start, off the calls' path.
- ``resources``   a VM's network slot and directory: attach, release.
- ``datadir``     one node per data directory (lock); the assets it boots; ``NodeError``.
- ``store``       the SQLite VM registry (``state.db``); the network package shares the file.
- ``migrations``  the versioned schema of ``state.db``: numbered forward steps (``PRAGMA user_version``).
- ``records``     agent endpoints as text for the store.
- ``orphans``     VMM processes and VM directories nobody tracks any more.
- ``tasks``       ``to_completion``: finish work a cancelled caller must not cut half-way.
- ``lifetimes``   ``Lifetime`` (a stored deadline and what ends the VM then: delete, or pause) and the
                  ``Reaper``: one task that acts when a deadline passes, also one passed while down.
- ``events``      ``EventLog``: every VM state change, numbered, in a bounded ring; bounded watchers.
- ``console``     a VM's console as users read it (tail, follow across rotation); what an Error VM keeps.
- ``usage``       a VM's CPU seconds and memory now: its cgroup (via a locator seam) or its VMM's /proc.
"""
