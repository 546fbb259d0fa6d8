"""What the server knows about a VM's agent right now: healthy, unresponsive, degraded, or unknown.

Every agent call the server makes and a light periodic ping (``limits.HEALTH_CHECK_INTERVAL``) update
it; ``list`` and ``get`` show it with since-when, so a wedged guest no longer looks like a good one.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from clawpot import limits


class AgentHealth(enum.Enum):
    UNKNOWN = "unknown"  # not checked yet, or the VM is not Running
    HEALTHY = "healthy"  # the last call or ping was answered in time
    UNRESPONSIVE = "unresponsive"  # the last call or ping was not answered in time, or the link broke
    # The connection was dropped because the guest broke the rules (flooding, bad frames): sticky.
    DEGRADED = "degraded"


@dataclass(frozen=True)
class HealthStatus:
    health: AgentHealth = AgentHealth.UNKNOWN
    since: float = field(default_factory=time.time)
    detail: str = ""

    def changed_to(self, health: AgentHealth, detail: str) -> HealthStatus:
        """The status after an observation: ``since`` moves only when ``health`` changes.

        DEGRADED is sticky for the VM's life: what the guest did stays visible whatever comes after
        (a later success or timeout does not hide it).
        """
        if self.health is AgentHealth.DEGRADED and health is not AgentHealth.UNKNOWN:
            return self
        detail = detail.strip().replace("\n", " ")[: limits.MAX_HEALTH_DETAIL_CHARS]
        if health is self.health:
            return HealthStatus(health, self.since, detail)
        return HealthStatus(health, time.time(), detail)
