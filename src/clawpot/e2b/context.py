"""``E2bContext``: what the E2B front door (REST and envd) may reach below it, in one small object.

Both apps get the same context: the ``Service`` (validated calls: create, delete, exec, upload,
download...), its ``Node`` (the agent link of a VM, for operations the service does not offer yet), the
API token the REST side checks, and ``sandbox(id)``: a sandbox id resolved to its VM and its E2B
attributes (``SandboxAttrs``: access token, default env vars, metadata), or ``errors.NotFound``.

A sandbox id IS a Clawpot VM id: no mapping table to keep in step.
"""

from __future__ import annotations

from dataclasses import dataclass

from clawpot import errors
from clawpot.e2b.sandboxes import SandboxAttrs, ensure_attrs
from clawpot.node.node import Node
from clawpot.node.vms import VmView
from clawpot.service import validate
from clawpot.service.service import Service


@dataclass(frozen=True)
class Sandbox:
    """One sandbox as the E2B layers see it: the VM (record + agent health) and its E2B attributes."""

    id: str
    view: VmView
    attrs: SandboxAttrs


@dataclass(frozen=True)
class E2bContext:
    service: Service
    token: str  # the server's API token: what ``X-API-Key`` must be

    @property
    def node(self) -> Node:
        return self.service.node

    def sandbox(self, sandbox_id: str) -> Sandbox:
        """The sandbox ``sandbox_id`` (= VM id); ``errors.NotFound`` if there is no such VM.

        A VM made through gRPC or the CLI is a sandbox too: it gets default attributes (secure, with a
        fresh access token that ``connect`` hands out) the first time it is looked at.
        """
        try:
            validate.vm_id(sandbox_id)
        except errors.InvalidArgument:
            raise errors.NotFound(f"sandbox {errors.quote(sandbox_id)} not found") from None
        try:
            view = self.node.get(sandbox_id).view()
        except errors.NotFound:
            raise errors.NotFound(f"sandbox {errors.quote(sandbox_id)} not found") from None
        return Sandbox(sandbox_id, view, ensure_attrs(view.record.vm_dir))
