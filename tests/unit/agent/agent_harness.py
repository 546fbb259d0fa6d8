"""The agent harness moved to tests/support/agent_harness.py (shared with the integration tests)."""

from support.agent_harness import (
    AgentProcess,
    RawConnection,
    kill_quietly,
    pid_alive,
    start_agent,
    stop_agent,
    wait_until,
)

__all__ = [
    "AgentProcess",
    "RawConnection",
    "kill_quietly",
    "pid_alive",
    "start_agent",
    "stop_agent",
    "wait_until",
]
