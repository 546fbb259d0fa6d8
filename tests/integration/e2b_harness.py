"""A real ``clawpot-server`` with its E2B front door, reachable by the real ``e2b`` SDK.

The server runs in its own network namespace (``server_harness``) and serves E2B on a unix socket in
its work directory (``--e2b-listen unix:PATH``); ``tcp_to_unix`` gives the SDK, which only dials TCP,
a loopback port relaying to it byte for byte. ``E2bEndpoint.opts()`` are the SDK's connection options
(the same values a user puts in E2B_API_URL, E2B_SANDBOX_URL and E2B_API_KEY).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server_harness import InstalledAssets, ServerProcess, server_in_namespace
from support.tcp_to_unix import tcp_to_unix

# Generous: a cold boot under TCG on a loaded two-core host takes several seconds, sometimes tens.
SDK_REQUEST_TIMEOUT = 180.0


@dataclass(frozen=True)
class E2bEndpoint:
    url: str
    api_key: str

    def opts(self, **overrides: Any) -> dict[str, Any]:
        return {
            "api_key": self.api_key,
            "api_url": self.url,
            "sandbox_url": self.url,
            "request_timeout": SDK_REQUEST_TIMEOUT,
            **overrides,
        }

    def env(self) -> dict[str, str]:
        return {"E2B_API_URL": self.url, "E2B_SANDBOX_URL": self.url, "E2B_API_KEY": self.api_key}


@contextlib.contextmanager
def e2b_server(
    workdir: Path, assets: InstalledAssets, *args: str
) -> Iterator[tuple[ServerProcess, E2bEndpoint]]:
    socket = workdir / "e2b.sock"
    with server_in_namespace(workdir, assets, "--e2b-listen", f"unix:{socket}", *args) as server:
        token = (server.data_dir / "api-token").read_text().strip()
        with tcp_to_unix(socket) as port:
            yield server, E2bEndpoint(f"http://127.0.0.1:{port}", token)
