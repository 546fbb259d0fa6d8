"""The E2B SDK front door: code written for E2B's SDK runs against a Clawpot server unchanged.

``clawpot-server --e2b-listen HOST:PORT`` serves one HTTP listener (HTTP/1.1 and HTTP/2) carrying both
of E2B's APIs; set ``E2B_API_URL`` and ``E2B_SANDBOX_URL`` to it and ``E2B_API_KEY`` to the API token.
A second, optional door: the gRPC API stays the primary one. Nothing below ``clawpot.service`` knows
about E2B; a sandbox IS a Clawpot VM (same id).

- ``listener``   ``--e2b-listen``: address rules (TLS off loopback, as gRPC), the socket, hypercorn.
- ``app``        the root ASGI app: ``E2b-Sandbox-Id`` header → envd, else → REST behind the API key.
- ``auth``       ``X-API-Key`` against the server's API token (constant time).
- ``errors``     E2B's error shape ``{"code", "message"}``; ``clawpot.errors`` kinds → HTTP statuses.
- ``context``    ``E2bContext``: the service, node and token both apps reach; sandbox id → VM + attrs.
- ``sandboxes``  ``SandboxAttrs`` (template, metadata, env vars, access token, autoPause) in
                 ``<vm_dir>/e2b.json``: lives and dies with the VM.
- ``rest/``      E2B's control plane (``spec/openapi.yml``): sandboxes create/get/list/kill/timeout/...,
                 fork, snapshots (``rest/snapshots``: ids, ``e2b-source.json`` in the snapshot)
- ``envd/``      the in-sandbox API (Connect-RPC process and filesystem services, ``/files``,
                 ``/health``, ``/envs``) translated to the agent protocol.
"""
