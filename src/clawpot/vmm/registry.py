"""Which backend runs a VM: ``get_backend(choice, options)``, and what ``auto`` means on this host.

Backends are imported lazily, so a host without QEMU never imports the QEMU code and vice versa.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from clawpot.vmm.base import VmmBackend
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
    ``data_dir`` is where the installed assets and the accelerator probe's cache live (None: default).
    ``die_with_parent`` kills the VMM when its launcher dies: right for one-VM launchers (the driver),
    wrong for the server, whose VMs outlive a restart and are adopted.
    ``persistent_control`` keeps one control connection per VM open (QEMU's QMP, which serves one
    client at a time): for the server, the VMs' one controller; not for the driver, whose ``status``
    runs in another process.
    ``use_jailer``: Firecracker under its jailer (the default); False is ``--no-jailer``.
    """

    binary: Path | None = None
    control_socket: Path | None = None
    data_dir: Path | None = None
    die_with_parent: bool = True
    persistent_control: bool = False
    use_jailer: bool = True


Factory = Callable[[BackendOptions], VmmBackend]


def _firecracker(options: BackendOptions) -> VmmBackend:
    from clawpot.vmm.firecracker.backend import FirecrackerBackend

    return FirecrackerBackend(
        options.binary,
        api_socket=options.control_socket,
        die_with_parent=options.die_with_parent,
        use_jailer=options.use_jailer,
    )


def _qemu(options: BackendOptions) -> VmmBackend:
    from clawpot.vmm.qemu.backend import QemuBackend

    return QemuBackend(
        options.binary,
        qmp_socket=options.control_socket,
        data=options.data_dir,
        die_with_parent=options.die_with_parent,
        persistent_qmp=options.persistent_control,
    )


_FACTORIES: dict[BackendKind, Factory] = {
    BackendKind.FIRECRACKER: _firecracker,
    BackendKind.QEMU: _qemu,
}


_BUILTIN: dict[BackendKind, Factory] = dict(_FACTORIES)


def register_backend(kind: BackendKind, factory: Factory) -> None:
    """Replace the factory for ``kind`` (tests, alternative builds)."""
    _FACTORIES[kind] = factory


def restore_backend(kind: BackendKind) -> None:
    """Put the built-in factory for ``kind`` back (after ``register_backend``)."""
    _FACTORIES[kind] = _BUILTIN[kind]


def kvm_boots_guests(data: Path | None = None) -> bool:
    """Whether this host's KVM runs stock guests to userland (false on kvm_pvm hosts); see ``probe``."""
    from clawpot.vmm.probe import kvm_boots_guests as probe_kvm

    return probe_kvm(data)


def resolve(choice: VmmChoice | str, data: Path | None = None) -> BackendKind:
    """The backend ``choice`` means here. ``auto`` may boot a probe VM on a cache miss and blocks
    meanwhile: an event loop that serves calls uses ``resolve_async``."""
    choice = VmmChoice(choice)
    if choice is VmmChoice.AUTO:
        return BackendKind.FIRECRACKER if kvm_boots_guests(data) else BackendKind.QEMU
    return BackendKind(choice.value)


async def resolve_async(choice: VmmChoice | str, data: Path | None = None) -> BackendKind:
    """``resolve`` without blocking the event loop: a probe boot runs as a coroutine of the loop."""
    choice = VmmChoice(choice)
    if choice is VmmChoice.AUTO:
        from clawpot.vmm.probe import kvm_boots_guests_async

        return BackendKind.FIRECRACKER if await kvm_boots_guests_async(data) else BackendKind.QEMU
    return BackendKind(choice.value)


def get_backend(choice: VmmChoice | str, options: BackendOptions | None = None) -> VmmBackend:
    options = options or BackendOptions()
    return _FACTORIES[resolve(choice, options.data_dir)](options)
