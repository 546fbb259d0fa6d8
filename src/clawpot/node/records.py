"""Turning live objects into what the store keeps: agent endpoints as JSON text."""

from __future__ import annotations

import json
from pathlib import Path

from clawpot.agent_client.endpoints import (
    AgentEndpoint,
    HybridVsockEndpoint,
    SerialSocketEndpoint,
    UnixSocketEndpoint,
    VsockEndpoint,
)


def endpoint_to_text(endpoint: AgentEndpoint | None) -> str:
    match endpoint:
        case None:
            return ""
        case HybridVsockEndpoint(uds_path=path, port=port):
            return json.dumps({"kind": "hybrid-vsock", "path": str(path), "port": port})
        case SerialSocketEndpoint(path=path):
            return json.dumps({"kind": "serial", "path": str(path)})
        case VsockEndpoint(cid=cid, port=port):
            return json.dumps({"kind": "vsock", "cid": cid, "port": port})
        case UnixSocketEndpoint(path=path):
            return json.dumps({"kind": "unix", "path": str(path)})
    raise TypeError(f"unknown endpoint {endpoint!r}")


def endpoint_from_text(text: str) -> AgentEndpoint | None:
    if not text:
        return None
    data = json.loads(text)
    kind = data["kind"]
    if kind == "hybrid-vsock":
        return HybridVsockEndpoint(Path(data["path"]), int(data["port"]))
    if kind == "serial":
        return SerialSocketEndpoint(Path(data["path"]))
    if kind == "vsock":
        return VsockEndpoint(int(data["cid"]), int(data["port"]))
    if kind == "unix":
        return UnixSocketEndpoint(Path(data["path"]))
    raise ValueError(f"unknown agent endpoint kind {kind!r}")
