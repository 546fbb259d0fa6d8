"""Which backend runs a VM: ``get_backend(choice, options)``, and what ``auto`` means on this host.

Backends are imported lazily, so a host without QEMU never imports the QEMU code and vice versa.
"""

from __future__ import annotations

import enum
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from clawpot.vmm.base import VmmBackend, VmmUnsupported
from clawpot.vmm.spec import BackendKind


class VmmChoice(enum.StrEnum):
    """What a user may ask for: a backend, or ``auto`` (the best one this host can boot guests with)."""

    AUTO = "auto"
    FIRECRACKER = "firecracker"
    QEMU = "qemu"


@dataclass(frozen=True)
class BackendOptions:
    """Options every backend understands.

    ``control_socket`` pins the VMM's control socket (Firecracker API / QEMU QMP) for a single-VM launch
    such as ``clawpot-driver --socket``; None puts each VM's socket in its own directory.
    """

    binary: Path | None = None
    control_socket: Path | None = None


Factory = Callable[[BackendOptions], VmmBackend]


def _firecracker(options: BackendOptions) -> VmmBackend:
    from clawpot.vmm.firecracker.backend import FirecrackerBackend

    return FirecrackerBackend(options.binary, api_socket=options.control_socket)


def _qemu(options: BackendOptions) -> VmmBackend:
    # Imported by name: the QEMU backend is optional at this layer and may expose a factory later.
    try:
        module = importlib.import_module("clawpot.vmm.qemu")
    except ImportError as exc:
        raise VmmUnsupported(f"the QEMU backend is not available: {exc}") from exc
    factory = getattr(module, "backend_from_options", None)
    if factory is None:
        raise VmmUnsupported("the QEMU backend is not available in this build")
    backend = factory(options)
    if not isinstance(backend, VmmBackend):
        raise TypeError(f"clawpot.vmm.qemu.backend_from_options returned {backend!r}")
    return backend


_FACTORIES: dict[BackendKind, Factory] = {
    BackendKind.FIRECRACKER: _firecracker,
    BackendKind.QEMU: _qemu,
}


def register_backend(kind: BackendKind, factory: Factory) -> None:
    """Replace the factory for ``kind`` (tests, alternative builds)."""
    _FACTORIES[kind] = factory


def kvm_boots_guests() -> bool:
    """Whether this host's KVM runs stock guests to userland (false on kvm_pvm hosts).

    Delegates to ``clawpot.vmm.qemu.kvm_boots_guests`` when the QEMU backend provides the probe; without
    a probe, assume a real KVM host.
    """
    try:
        module = importlib.import_module("clawpot.vmm.qemu")
    except ImportError:
        return True
    probe = getattr(module, "kvm_boots_guests", None)
    return bool(probe()) if callable(probe) else True


def resolve(choice: VmmChoice | str) -> BackendKind:
    choice = VmmChoice(choice)
    if choice is VmmChoice.AUTO:
        return BackendKind.FIRECRACKER if kvm_boots_guests() else BackendKind.QEMU
    return BackendKind(choice.value)


def get_backend(choice: VmmChoice | str, options: BackendOptions | None = None) -> VmmBackend:
    return _FACTORIES[resolve(choice)](options or BackendOptions())
