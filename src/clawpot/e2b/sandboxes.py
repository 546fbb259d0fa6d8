"""What E2B knows about a sandbox that a Clawpot VM does not: ``SandboxAttrs``, kept in the VM's directory.

The file ``<vm_dir>/e2b.json`` is written when ``POST /sandboxes`` has booted the VM, and lives and
dies with the VM's directory (deleting the VM removes it; nothing else to clean). It holds the envd
access token, so it is created 0600 and atomically (a temporary file, then rename or link): a reader
sees a whole file or none.

Every sandbox is ``secure`` unless created with ``secure: false`` through the v1 API: its envd
requires ``X-Access-Token``. A VM made through gRPC or the CLI gets attributes (with a fresh token)
the first time the E2B side looks at it (``ensure_attrs``), so its envd is never open by default; a
file that cannot be read or parsed locks envd (a token nobody knows) rather than opening it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from clawpot import limits

log = logging.getLogger(__name__)

FILE_NAME = "e2b.json"


def new_access_token() -> str:
    return secrets.token_urlsafe(limits.API_TOKEN_BYTES)


@dataclass(frozen=True)
class SandboxAttrs:
    template_id: str = limits.E2B_DEFAULT_TEMPLATE
    metadata: dict[str, str] = field(default_factory=dict)
    # Default environment of every process the sandbox's envd starts (E2B's ``envVars``).
    env_vars: dict[str, str] = field(default_factory=dict)
    # envd requires ``X-Access-Token: <envd_access_token>``; None only for ``secure: false``.
    envd_access_token: str | None = field(default_factory=new_access_token)
    # E2B's ``autoPause``: when the timeout passes the sandbox is paused rather than killed.
    auto_pause: bool = False

    @property
    def secure(self) -> bool:
        return self.envd_access_token is not None


def save_attrs(vm_dir: Path, attrs: SandboxAttrs) -> None:
    """Write (or replace) the attributes atomically."""
    tmp = _write_tmp(vm_dir, attrs)
    try:
        os.replace(tmp, vm_dir / FILE_NAME)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def load_attrs(vm_dir: Path) -> SandboxAttrs | None:
    """The stored attributes; None when there is no file. A damaged file locks envd (fresh token)."""
    try:
        with (vm_dir / FILE_NAME).open("rb") as f:
            raw = f.read(limits.E2B_ATTRS_MAX_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("%s: cannot read %s (%s); envd stays locked", vm_dir.name, FILE_NAME, exc.strerror)
        return SandboxAttrs()
    try:
        if len(raw) > limits.E2B_ATTRS_MAX_BYTES:
            raise ValueError("too large")
        data: Any = json.loads(raw)
        token = data["envd_access_token"]
        return SandboxAttrs(
            template_id=str(data["template_id"]),
            metadata={str(k): str(v) for k, v in data["metadata"].items()},
            env_vars={str(k): str(v) for k, v in data["env_vars"].items()},
            envd_access_token=None if token is None else str(token),
            auto_pause=bool(data["auto_pause"]),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("%s: %s is damaged (%s); envd stays locked", vm_dir.name, FILE_NAME, exc)
        return SandboxAttrs()


def ensure_attrs(vm_dir: Path) -> SandboxAttrs:
    """The stored attributes, or new default ones (secure, fresh token) stored now if there were none.

    Created with ``link``, which fails if the file appeared meanwhile: two first looks at the same VM
    agree on one token. A VM whose directory is gone gets a token nobody is told (envd stays locked).
    """
    found = load_attrs(vm_dir)
    if found is not None:
        return found
    attrs = SandboxAttrs()
    try:
        tmp = _write_tmp(vm_dir, attrs)
    except OSError:
        return attrs
    try:
        os.link(tmp, vm_dir / FILE_NAME)
    except FileExistsError:
        return load_attrs(vm_dir) or SandboxAttrs()
    except OSError:
        return attrs
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return attrs


def _write_tmp(vm_dir: Path, attrs: SandboxAttrs) -> str:
    fd, tmp = tempfile.mkstemp(prefix=".e2b.", dir=vm_dir)  # created 0600
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(attrs), f, sort_keys=True)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return tmp
