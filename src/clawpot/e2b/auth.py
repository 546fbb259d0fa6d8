"""The REST side's API key: ``X-API-Key`` must be the server's API token (``clawpot token``).

Compared in constant time; a missing or wrong key gets E2B's 401 shape (the SDK raises
``AuthenticationException``), never echoing what was presented. The envd side (requests routed by
``E2b-Sandbox-Id``) is authenticated by the sandbox's own access token instead (``clawpot.e2b.envd``).
"""

from __future__ import annotations

import hmac

from starlette.datastructures import Headers

MISSING = "missing API key: send header 'X-API-Key: TOKEN' (E2B_API_KEY; `clawpot token` prints it)"
WRONG = "wrong API key (`clawpot token` prints the right one)"


def check_api_key(headers: Headers, token: str) -> str | None:
    """None if the request carries the key, else the reason to refuse (one line, no secrets)."""
    presented = headers.getlist("x-api-key")
    if not presented:
        return MISSING
    if len(presented) > 1:
        return "more than one X-API-Key header"
    if not hmac.compare_digest(presented[0].encode("utf-8", errors="replace"), token.encode()):
        return WRONG
    return None
