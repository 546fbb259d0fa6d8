"""``clawpot-server``: the gRPC front. Only ``servicer`` and ``app`` import grpc; nothing here decides.

- ``app``        process wiring: opens the node (``clawpot.node``), wraps it in the ``Service``
                 (``clawpot.service``), serves a unix-socket server and a TCP server (token), health +
                 reflection, graceful SIGTERM.
- ``servicer``   protobuf ⇄ ``Service`` calls; ``clawpot.errors`` kinds → gRPC status codes.
- ``listeners``  listen addresses checked before start: TLS off loopback, ``--socket-group``, PEM files.
- ``auth``       the token interceptor of TCP listeners (constant-time check; health stays open).
- ``apitoken``   ``<data>/api-token``: made 0600 at first start, kept, refused if others can read it.
- ``rpcmetrics``  the interceptor that counts, times and logs (one line) every call.
- ``logfmt``      ``--log-format``: text, or one JSON object per line.
"""
