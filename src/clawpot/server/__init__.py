"""``clawpot-server``: the gRPC service. Only ``servicer`` and ``app`` import grpc.

- ``app``        process wiring: listeners (TCP, unix 0600), health + reflection, graceful SIGTERM.
- ``servicer``   protobuf ⇄ ``VmManager`` calls; ``ServerError`` kinds → gRPC status codes.
- ``manager``    ``VmManager``: create / get / list / delete, exec and files through the agent,
                 reconcile and adopt at start. The core; no gRPC.
- ``sessions``   exec sessions and downloads as the servicer streams them.
- ``store``      the SQLite VM registry (``state.db``); the network package shares the file.
- ``migrations`` the versioned schema of ``state.db``: numbered forward steps (``PRAGMA user_version``).
- ``records``    agent endpoints as text for the store.
- ``orphans``    VMM processes and VM directories nobody tracks any more.
- ``errors``     ``ServerError`` and its kinds (the status-code map is in ``errors``' docstring).
"""
