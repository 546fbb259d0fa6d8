"""The node's VMM backends: one per kind, built on first use, and what ``auto`` means on this host.

``auto`` may need a probe boot (``clawpot.vmm.probe``: a QEMU VM under KVM, seconds). It starts when
the node opens, as a task of the event loop, never inside a call: calls that need the answer (a create
without a backend, when the node's default is auto) await it; every other call is served meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from clawpot import errors
from clawpot.node.datadir import Assets
from clawpot.vmm.adopted import AttachOnlyBackend
from clawpot.vmm.base import VmmBackend, VmmError
from clawpot.vmm.registry import BackendOptions, VmmChoice, get_backend, resolve_async
from clawpot.vmm.spec import BackendKind

log = logging.getLogger(__name__)


class Backends:
    def __init__(
        self, data_dir: Path, assets: Assets, default: BackendKind | None, *, use_jailer: bool = True
    ) -> None:
        self.data_dir = data_dir
        self.use_jailer = use_jailer
        self.assets = assets
        self.default = default
        self._built: dict[BackendKind, VmmBackend] = {}
        self._auto: asyncio.Task[BackendKind] | None = None

    def start_probe(self) -> None:
        """Begin answering ``auto`` now (when it is the default), off the calls' path."""
        if self.default is None and self._auto is None:
            self._auto = asyncio.create_task(resolve_async(VmmChoice.AUTO, self.data_dir), name="auto probe")

    async def resolve(self, kind: BackendKind | None) -> BackendKind:
        """The kind a VM asking for ``kind`` (None: the node's default) gets."""
        if kind is not None:
            return kind
        if self.default is not None:
            return self.default
        self.start_probe()
        assert self._auto is not None
        try:
            # Shielded: a cancelled create must not cancel the probe every other create waits for.
            return await asyncio.shield(self._auto)
        except VmmError as exc:
            raise errors.Unavailable(f"cannot choose a backend (auto): {exc}") from exc

    def get(self, kind: BackendKind) -> VmmBackend:
        """The backend for ``kind``, UNAVAILABLE when it cannot run here."""
        backend = self._built.get(kind)
        if backend is None:
            firecracker = self.assets.firecracker
            options = BackendOptions(
                binary=firecracker if kind is BackendKind.FIRECRACKER and firecracker.exists() else None,
                data_dir=self.data_dir,
                # The node's VMs outlive the server process: a restarted server attaches them.
                die_with_parent=False,
                # The server is their one controller: it keeps one control connection per VM open.
                persistent_control=True,
                use_jailer=self.use_jailer,
            )
            try:
                backend = get_backend(kind.value, options)
            except VmmError as exc:
                raise errors.Unavailable(f"{kind} backend unusable here: {exc}") from exc
            capabilities = backend.capabilities()
            if not capabilities.available:
                raise errors.Unavailable(f"{kind} backend unusable here: {capabilities.detail}")
            self._built[kind] = backend
        return backend

    def for_attach(self, kind: BackendKind) -> VmmBackend:
        """The backend to take a running VM of ``kind`` back with; one that only attaches when the
        real one cannot be built here any more (the VM is still watched and can be deleted)."""
        try:
            return self.get(kind)
        except errors.ServerError as exc:
            log.warning("%s", exc)
            return AttachOnlyBackend(kind, str(exc))

    async def close(self) -> None:
        if self._auto is not None and not self._auto.done():
            self._auto.cancel()
            with contextlib.suppress(BaseException):
                await self._auto
