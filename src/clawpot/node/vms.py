"""``NodeVm``: what the node holds for one VM: its stored record, its handle, its agent link, and the
tasks working on it (create, delete, health check). One shape, however the VM came to this node."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from clawpot.network.policydb import VmNetworkPolicy
from clawpot.node.agents import AgentLink
from clawpot.node.health import HealthStatus
from clawpot.node.lifetimes import Lifetime
from clawpot.node.store import VmRecord
from clawpot.vm.handle import Vm
from clawpot.vm.state import VmState

# States in which a VM holds host memory (admission counts them): from an accepted create until its
# delete has stopped the VMM.
HOLDS_MEMORY = (VmState.NOT_STARTED, VmState.STARTING, VmState.RUNNING, VmState.PAUSED, VmState.STOPPING)


class NodeVm:
    def __init__(self, record: VmRecord, agent_timeout: float) -> None:
        self.record = record
        # The handle, booted here or attached after a restart; None until the boot creates it, and
        # for a VM in Error whose VMM is gone.
        self.vm: Vm | None = None
        self.agent = AgentLink(record.id, agent_timeout)
        self.create_task: asyncio.Task[VmRecord] | None = None
        self.delete_task: asyncio.Task[None] | None = None
        self.health_task: asyncio.Task[None] | None = None  # the periodic check in flight, if any
        # Freeing what a crashed VM held (its console kept): a delete waits for it.
        self.release_task: asyncio.Task[None] | None = None
        self.deleting = False
        # Its egress policy and published ports (stored by the network package; shown by get/list).
        self.network = VmNetworkPolicy()
        # One VMM operation at a time (pause, resume, snapshot): a resume must not land mid-snapshot.
        self.operation = asyncio.Lock()
        # When the VM's lifetime ends (the reaper acts then); None: it lives until deleted.
        self.lifetime: Lifetime | None = None
        # Its RAM maps a snapshot's memory file copy-on-write (a clone): admission charges it as one.
        self.shares_ram = False
        # A warm pool VM given up to make room for a user's create: its delete runs in the background
        # and admission no longer counts it (briefly overbooked by one clone's charge at most).
        self.evicted = False

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def holds_memory(self) -> bool:
        return self.record.state in HOLDS_MEMORY and not self.evicted

    def view(self) -> VmView:
        return VmView(self.record, self.agent.health, self.network, self.lifetime)


@dataclass(frozen=True)
class VmView:
    """A VM as ``get`` and ``list`` show it: its stored record and what the node sees of its agent."""

    record: VmRecord
    health: HealthStatus
    network: VmNetworkPolicy = field(default_factory=VmNetworkPolicy)
    lifetime: Lifetime | None = None
