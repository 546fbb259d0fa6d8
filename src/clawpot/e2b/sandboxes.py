"""What E2B knows about a sandbox that a Clawpot VM does not: ``SandboxAttrs``, kept in the VM's directory.

The file ``<vm_dir>/e2b.json`` is written once, when ``POST /sandboxes`` has booted the VM, and lives
and dies with the VM's directory (deleting the VM removes it; nothing else to clean). It holds the
envd access token of a ``secure`` sandbox, so it is written 0600 and atomically (temporary file, then
rename): a reader sees the old file or the new one, never half of one.

A VM without the file (made through gRPC or the CLI) has default attributes.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from clawpot import limits

FILE_NAME = "e2b.json"


@dataclass(frozen=True)
class SandboxAttrs:
    template_id: str = limits.E2B_DEFAULT_TEMPLATE
    metadata: dict[str, str] = field(default_factory=dict)
    # Default environment of every process the sandbox's envd starts (E2B's ``envVars``).
    env_vars: dict[str, str] = field(default_factory=dict)
    # ``secure`` sandboxes require ``X-Access-Token: <envd_access_token>`` on every envd request.
    envd_access_token: str | None = None
    # E2B's ``autoPause``: when the timeout passes the sandbox is paused rather than killed.
    auto_pause: bool = False

    @property
    def secure(self) -> bool:
        return self.envd_access_token is not None


def save_attrs(vm_dir: Path, attrs: SandboxAttrs) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".e2b.", dir=vm_dir)  # created 0600
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(attrs), f, sort_keys=True)
        os.replace(tmp, vm_dir / FILE_NAME)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def load_attrs(vm_dir: Path) -> SandboxAttrs:
    """The stored attributes, or the defaults when there is no (readable, well-formed) file."""
    try:
        with (vm_dir / FILE_NAME).open("rb") as f:
            raw = f.read(limits.E2B_ATTRS_MAX_BYTES + 1)
    except OSError:
        return SandboxAttrs()
    if len(raw) > limits.E2B_ATTRS_MAX_BYTES:
        return SandboxAttrs()
    try:
        data: Any = json.loads(raw)
        return SandboxAttrs(
            template_id=str(data["template_id"]),
            metadata={str(k): str(v) for k, v in data["metadata"].items()},
            env_vars={str(k): str(v) for k, v in data["env_vars"].items()},
            envd_access_token=None if data["envd_access_token"] is None else str(data["envd_access_token"]),
            auto_pause=bool(data["auto_pause"]),
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return SandboxAttrs()
