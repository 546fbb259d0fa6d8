"""What answers the API, above the node: validation, defaults, limits, admission, placement. No gRPC.

- ``service``     ``Service``: checks and admits each call, places creates on the node, delegates.
- ``validate``    bounds on every request field (``limits``); INVALID_ARGUMENT quoting a short prefix.
- ``admission``   committed guest memory + per-VM overhead against MemTotal x overcommit.
- ``paging``      ListVms pages and their tokens.
- ``pool``        ``WarmPool``: VMs restored ready per shape, handed out to matching creates, refilled.
- ``poolspec``    ``--pool SPEC`` (``1x256:4,...``) parsed into shapes, one-line errors.

The error kinds both this package and the node raise are ``clawpot.errors`` (one vocabulary, like
``clawpot.limits`` is one source of numbers); the gRPC servicer maps each to a status code.
"""
