"""What a VM holds on the host besides its VMM: a network slot (TAP + address) and its directory.
Taken during a boot, released once, when the VM is deleted, fails or is found dead at start."""

from __future__ import annotations

import asyncio
import contextlib
import shutil

from clawpot import errors
from clawpot.network import (
    AddressInUse,
    AddressNotAllowed,
    AddressPoolExhausted,
    NetworkError,
    NetworkManager,
    NetworkSlot,
    PortInUse,
)
from clawpot.network.policy import PolicyError
from clawpot.network.policydb import VmNetworkPolicy
from clawpot.node.store import VmRecord
from clawpot.node.tasks import to_completion


async def attach_network(
    network: NetworkManager | None,
    vm_id: str,
    ip_address: str | None,
    *,
    allow_peers: bool,
    policy: VmNetworkPolicy | None = None,
) -> NetworkSlot | None:
    if network is None:
        return None
    try:
        # A thread cannot be interrupted: a cancelled create waits for the attach to finish, so the
        # undo that follows sees (and removes) everything it made.
        return await to_completion(
            asyncio.to_thread(
                network.attach_vm, vm_id, ip_address or None, allow_peers=allow_peers, policy=policy
            )
        )
    except AddressPoolExhausted as exc:
        raise errors.ResourceExhausted(str(exc)) from exc
    except (AddressInUse, PortInUse) as exc:
        raise errors.AlreadyExists(str(exc)) from exc
    except (AddressNotAllowed, PolicyError) as exc:
        raise errors.InvalidArgument(str(exc)) from exc


async def release(network: NetworkManager | None, record: VmRecord) -> None:
    """Free the VM's network slot and remove its directory (idempotent)."""
    await release_network(network, record)
    await asyncio.to_thread(shutil.rmtree, record.vm_dir, True)


async def release_network(network: NetworkManager | None, record: VmRecord) -> None:
    """Free the VM's network slot (TAP, address, rules); idempotent."""
    if network is not None:
        with contextlib.suppress(NetworkError):
            await asyncio.to_thread(network.detach_vm, record.id)
