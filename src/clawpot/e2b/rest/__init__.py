"""E2B's control plane (its public OpenAPI spec, ``spec/openapi.yml``) over Clawpot's ``Service``.

- ``app``      ``create_rest_app(ctx)``: the Starlette routes (sandboxes: create, get, list v1/v2, kill,
               timeout, pause, resume, connect, refreshes, logs, metrics, fork; snapshots: take, list,
               delete, create from) and E2B's semantics.
- ``bodies``   request bodies (pydantic, E2B's field names), bounded; unsupported options refused.
- ``shapes``   response bodies as the SDK's models parse them; ``ENVD_VERSION``; E2B states.
- ``listing``  list filters (metadata, state, template, startedAfter), order, ``X-Next-Token`` paging.
- ``snapshots`` E2B snapshot ids over Clawpot snapshot names, what a snapshot keeps of its sandbox
               (``e2b-source.json``: source id, envVars), ``GET /snapshots`` filters and paging.
- ``logs``     the guest's serial console as E2B log lines.
- ``usage``    metrics from /proc and the writable layer (minimal; replaceable).
"""

from clawpot.e2b.rest.app import create_rest_app

__all__ = ["create_rest_app"]
