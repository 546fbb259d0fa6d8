"""One VM's life, on any VMM backend.

- ``state``       the lifecycle state machine (NotStarted → Starting → Running → Stopping → Stopped, Error)
- ``config``      ``VmConfig``: what a user asks for (kernel, rootfs, sizes, readiness)
- ``validation``  checks a VmConfig before anything is created; one line per problem
- ``directory``   the per-VM directory and its ``metadata.json``
- ``sockets``     sun_path limit; live vs stale unix sockets and who owns them
- ``procfs``      process liveness and start times (PID reuse safe)
- ``machine``     ``Vm``: the boot pipeline of named steps with undo, the exit watcher, stop
- ``errors``      ``VmError`` and its subclasses
"""
