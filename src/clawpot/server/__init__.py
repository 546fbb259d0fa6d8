"""``clawpot-server``: the gRPC service. Only ``servicer`` and ``app`` import grpc.

- ``app``        process wiring: a unix-socket server and a TCP server (token), health + reflection,
                 graceful SIGTERM.
- ``listeners``  listen addresses checked before start: TLS off loopback, ``--socket-group``, PEM files.
- ``auth``       the token interceptor of TCP listeners (constant-time check; health stays open).
- ``apitoken``   ``<data>/api-token``: made 0600 at first start, kept, refused if others can read it.
- ``servicer``   protobuf ⇄ ``VmManager`` calls; ``ServerError`` kinds → gRPC status codes.
- ``manager``    ``VmManager``: create / get / list / delete, exec and files through the agent,
                 reconcile and adopt at start. The core; no gRPC.
- ``sessions``   exec sessions and transfers as the servicer streams them, under host deadlines.
- ``validate``   bounds on every request field (``limits``); INVALID_ARGUMENT quoting a short prefix.
- ``admission``  committed guest memory + per-VM overhead against MemTotal x overcommit.
- ``health``     what the server sees of each VM's agent (healthy / unresponsive / degraded), since when.
- ``paging``     ListVms pages and their tokens.
- ``store``      the SQLite VM registry (``state.db``); the network package shares the file.
- ``migrations`` the versioned schema of ``state.db``: numbered forward steps (``PRAGMA user_version``).
- ``records``    agent endpoints as text for the store.
- ``orphans``    VMM processes and VM directories nobody tracks any more.
- ``errors``     ``ServerError`` and its kinds, ``translate`` (the one map of expected failures), ``quote``.
"""
