"""The command-line programs. Each is wiring only: parse, call the layer below, print, exit.

- ``main``        ``clawpot``: the client (its groups: ``vms``, ``exec``, ``files``, ``assets``).
- ``connection``  reaching the server (unix, loopback TCP + token, TLS), gRPC errors as one line, exit codes.
- ``terminal``    ``safe``: server and guest text with control characters escaped before printing.
- ``apitoken``    ``clawpot token``: print the API token.
- ``vms``         ``create``, ``list``, ``get``, ``delete``.
- ``exec``        ``exec``: streams stdin/stdout/stderr, passes the exit code through.
- ``files``       ``cp`` in and out of a VM.
- ``assets``      ``clawpot assets install | status | inject``.
- ``doctor``      ``clawpot doctor``: host checks and the backend ``--vmm auto`` picks.
- ``hostchecks``  doctor's plumbing checks: nftables, bridge, DNS forwarder, cgroups, free addresses.
- ``observe``     ``logs`` (a VM's console, escaped) and ``events`` (the state-change stream).
- ``server``      ``clawpot-server``.
- ``driver``      ``clawpot-driver``: one VM in the foreground, no server.
"""
