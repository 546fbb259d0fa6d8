"""Agent health: since-when moves only on a change, details are short, DEGRADED sticks."""

from __future__ import annotations

from clawpot import limits
from clawpot.node.health import AgentHealth, HealthStatus


def test_since_moves_only_when_the_health_changes() -> None:
    start = HealthStatus(AgentHealth.HEALTHY, since=100.0, detail="answered")
    same = start.changed_to(AgentHealth.HEALTHY, "answered a ping")
    assert (same.since, same.detail) == (100.0, "answered a ping")
    worse = same.changed_to(AgentHealth.UNRESPONSIVE, "did not answer within 2s")
    assert worse.health is AgentHealth.UNRESPONSIVE and worse.since > 100.0


def test_details_are_one_short_line() -> None:
    status = HealthStatus().changed_to(AgentHealth.UNRESPONSIVE, "x" * 10_000 + "\nmore")
    assert len(status.detail) == limits.MAX_HEALTH_DETAIL_CHARS and "\n" not in status.detail


def test_degraded_sticks_until_the_vm_stops() -> None:
    degraded = HealthStatus().changed_to(AgentHealth.DEGRADED, "window exceeded")
    assert degraded.changed_to(AgentHealth.HEALTHY, "ok") is degraded
    assert degraded.changed_to(AgentHealth.UNRESPONSIVE, "no answer") is degraded
    assert degraded.changed_to(AgentHealth.UNKNOWN, "VM deleted").health is AgentHealth.UNKNOWN
