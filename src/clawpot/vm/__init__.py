"""One VM's life, on any VMM backend.

- ``state``       the lifecycle state machine (NotStarted → Starting → Running → Stopping → Stopped, Error)
- ``config``      ``VmConfig``: what a user asks for (kernel, rootfs, sizes, readiness)
- ``validation``  checks a VmConfig before anything is created; one line per problem
- ``directory``   the per-VM directory and its ``metadata.json``
- ``sockets``     sun_path limit; live vs stale unix sockets and who owns them
- ``procfs``      process liveness and start times (PID reuse safe)
- ``handle``      ``Vm``: the one handle of a VM, booted (``start``) or attached (``attach``); exit watcher,
                  stop, kill, detach, and pause / resume / snapshot checked against capabilities
- ``boot``        the boot recipe: named steps (validate → directory → writable layer → kernel command
                  line → start VMM → wait for agent), each returning its undo
- ``errors``      ``VmError`` and its subclasses
"""
