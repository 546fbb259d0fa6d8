"""E2B's control plane (its public OpenAPI spec, ``spec/openapi.yml``) over Clawpot's ``Service``.

- ``app``      ``create_rest_app(ctx)``: the Starlette routes (sandboxes: create, get, list v1/v2, kill,
               timeout, pause, resume, connect, refreshes, logs, metrics) and E2B's error shape.
"""

from clawpot.e2b.rest.app import create_rest_app

__all__ = ["create_rest_app"]
