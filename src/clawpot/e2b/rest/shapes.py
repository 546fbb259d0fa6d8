"""Response bodies exactly as the SDK's generated models parse them (``e2b.api.client.models``):
``Sandbox`` (create, connect, resume), ``SandboxDetail`` (get), ``ListedSandbox`` (list). Pure
functions of a ``Sandbox`` (the VM and its E2B attributes), so they are unit-tested without a server.
"""

from __future__ import annotations

import datetime
import os
from typing import Any

from clawpot.e2b.context import Sandbox
from clawpot.node.lifetimes import Expiry
from clawpot.vm.directory import SCRATCH_NAME
from clawpot.vm.state import VmState

# The envd version every sandbox reports. The SDK turns features on by it (e2b/envd/versions.py):
# 0.3.0 stdin, 0.4.0 envd's own default user, 0.5.2 envd close, 0.5.7 octet-stream uploads, 0.6.2 file
# metadata, 0.6.3 entry info in watch events, 0.6.4 watching network mounts; below 0.1.0 it refuses
# the sandbox. Clawpot's envd (clawpot.e2b.envd) serves all of them.
ENVD_VERSION = "0.6.4"
# E2B names the node that runs a sandbox; here there is one.
CLIENT_ID = "clawpot"
# ``endAt`` of a sandbox without a lifetime (a VM made with no --timeout): the SDK requires a date.
NEVER = "9999-12-31T23:59:59Z"

# E2B knows two states. A VM still booting is shown running (its create has not returned yet); a VM
# in Error or being deleted is not a sandbox any more.
_STATES = {
    VmState.NOT_STARTED: "running",
    VmState.STARTING: "running",
    VmState.RUNNING: "running",
    VmState.PAUSED: "paused",
}


def e2b_state(state: VmState) -> str | None:
    return _STATES.get(state)


def iso(epoch: float) -> str:
    """RFC 3339 in UTC, as E2B writes it (``2026-11-26T16:30:00.123Z``)."""
    stamp = datetime.datetime.fromtimestamp(epoch, datetime.UTC)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def end_at(sandbox: Sandbox) -> str:
    lifetime = sandbox.view.lifetime
    return iso(lifetime.expires_at) if lifetime is not None else NEVER


def disk_size_mb(sandbox: Sandbox) -> int:
    try:
        return os.stat(sandbox.view.record.vm_dir / SCRATCH_NAME).st_size // (1 << 20)
    except OSError:
        return 0


def sandbox_body(sandbox: Sandbox) -> dict[str, Any]:
    """``Sandbox``: what create, connect and resume answer (with the envd access token)."""
    body: dict[str, Any] = {
        "templateID": sandbox.attrs.template_id,
        "alias": sandbox.attrs.template_id,
        "sandboxID": sandbox.id,
        "clientID": CLIENT_ID,
        "envdVersion": ENVD_VERSION,
        "domain": None,  # the SDK reaches envd through E2B_SANDBOX_URL, not a per-sandbox host name
    }
    if sandbox.attrs.envd_access_token is not None:
        body["envdAccessToken"] = sandbox.attrs.envd_access_token
    return body


def _common(sandbox: Sandbox, state: str) -> dict[str, Any]:
    record = sandbox.view.record
    return {
        "templateID": sandbox.attrs.template_id,
        "alias": sandbox.attrs.template_id,
        "sandboxID": sandbox.id,
        "clientID": CLIENT_ID,
        "startedAt": iso(record.created_at),
        "endAt": end_at(sandbox),
        "envdVersion": ENVD_VERSION,
        "cpuCount": record.vcpus,
        "memoryMB": record.memory_mib,
        "diskSizeMB": disk_size_mb(sandbox),
        "state": state,
        "metadata": dict(sandbox.attrs.metadata),
    }


def listed_body(sandbox: Sandbox, state: str) -> dict[str, Any]:
    """``ListedSandbox``: one entry of GET /sandboxes and GET /v2/sandboxes."""
    return _common(sandbox, state)


def detail_body(sandbox: Sandbox, state: str) -> dict[str, Any]:
    """``SandboxDetail``: GET /sandboxes/{id}."""
    body = _common(sandbox, state)
    if sandbox.attrs.envd_access_token is not None:
        body["envdAccessToken"] = sandbox.attrs.envd_access_token
    lifetime = sandbox.view.lifetime
    pauses = sandbox.attrs.auto_pause or (lifetime is not None and lifetime.on_expiry is Expiry.PAUSE)
    body["lifecycle"] = {"autoResume": False, "onTimeout": "pause" if pauses else "kill"}
    body["domain"] = None
    return body
