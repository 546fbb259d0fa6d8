"""``AgentLink``: the one owner of a VM's agent connection and of what the node sees of that agent.

Every call into the guest goes through ``connected()``: the connection is reused while it answers a
ping, reopened when it broke, and given up on when the guest stays silent, all within a time budget,
so a frozen or wedged guest turns into UNAVAILABLE instead of a call that hangs. Each outcome updates
the VM's ``HealthStatus`` (``health``). One lock: a serial channel serves one connection at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from clawpot import errors, limits
from clawpot.agent_client import AgentClient, GuestError, wait_ready
from clawpot.agent_client.endpoints import AgentEndpoint
from clawpot.agent_client.errors import AgentDisconnected, AgentUnreachable, ProtocolError
from clawpot.metrics import instruments
from clawpot.node.health import AgentHealth, HealthStatus

log = logging.getLogger(__name__)


class AgentLink:
    def __init__(self, vm_id: str, agent_timeout: float) -> None:
        self.vm_id = vm_id
        self.agent_timeout = agent_timeout
        self.endpoint: AgentEndpoint | None = None
        self.client: AgentClient | None = None
        self.health = HealthStatus()
        self._lock = asyncio.Lock()
        self._answered_at = -float("inf")  # event-loop time of the last ping or connection answered

    # -- what the node sees of the agent ---------------------------------------------------------------

    def mark(self, health: AgentHealth, detail: str = "") -> None:
        """Record what was just seen of the agent (``since`` moves only when ``health`` changes).

        DEGRADED is for a connection dropped because the guest misbehaved (``AgentClient.violation``);
        it sticks (see health.py).
        """
        if health is not AgentHealth.HEALTHY:
            self._answered_at = -float("inf")  # whatever went wrong, the next call pings again
        before = self.health.health
        self.health = self.health.changed_to(health, detail)
        if self.health.health is not before:
            log.info("VM %s agent: %s -> %s (%s)", self.vm_id, before.value,
                     self.health.health.value, self.health.detail)  # fmt: skip

    def lost(self, agent: AgentClient, exc: BaseException) -> None:
        """A call on ``agent`` failed because its connection broke: UNRESPONSIVE, or DEGRADED when the
        client dropped it for a protocol violation by the guest."""
        # ``violation``: why the agent client dropped a guest that broke its bounds (None otherwise).
        violation = agent.violation
        if violation:
            self.mark(AgentHealth.DEGRADED, violation)
        else:
            self.mark(AgentHealth.UNRESPONSIVE, f"connection lost: {one_line(exc)}")

    # -- time budgets ----------------------------------------------------------------------------------

    def budget(self, deadline: float | None) -> float:
        """Seconds the next agent step may take: ``agent_timeout``, or less when a deadline is near."""
        if deadline is None:
            return self.agent_timeout
        return max(0.0, min(self.agent_timeout, deadline - asyncio.get_running_loop().time()))

    def too_late(self, doing: str, budget: float, deadline: float | None) -> errors.ServerError:
        """The error for an agent step that ran out of time: the exec's deadline, or the agent's."""
        self.mark(AgentHealth.UNRESPONSIVE, f"did not {doing} within {budget:.3g}s")
        if deadline is not None and asyncio.get_running_loop().time() >= deadline - 0.01:
            return errors.DeadlineExceeded(
                f"timed out: the agent of VM {self.vm_id} did not {doing} before the command's deadline"
            )
        return errors.Unavailable(f"agent of VM {self.vm_id} did not {doing} within {budget:.3g}s")

    # -- the connection --------------------------------------------------------------------------------

    def adopt(self, client: AgentClient | None, endpoint: AgentEndpoint | None) -> None:
        """Take the connection a boot opened (kept: a serial channel serves one host connection)."""
        self.client = client
        self.endpoint = endpoint
        if client is not None:
            self.mark(AgentHealth.HEALTHY, "answered at boot")

    async def connected(self, budget: float, deadline: float | None = None) -> AgentClient:
        """The agent connection, (re)opened when needed and checked alive with a ping, within ``budget``.

        A call that queued behind another one on the lock takes the answer that one got: calls that
        arrive together (50 concurrent execs) cost one ping, not 50 in a row, each eating into the
        budget of the calls behind it. A call that waited for nobody always pings.
        """
        loop = asyncio.get_running_loop()
        queued_at = loop.time()
        try:
            # The lock wait counts too: calls queued behind a ping to a wedged guest must not add up.
            async with asyncio.timeout(budget), self._lock:
                agent = self.client
                if agent is not None and not agent.connected:
                    # Closed since the last call: by the agent, or by the client for a violation.
                    self.lost(agent, AgentDisconnected("the connection was closed"))
                if agent is not None and agent.connected:
                    if self._answered_at >= queued_at:
                        return agent  # proven while this call waited for the lock
                    try:
                        await agent.ping()
                    except GuestError as exc:
                        self.lost(agent, exc)  # the connection died under us: reopen below
                    else:
                        self._answered_at = loop.time()
                        self.mark(AgentHealth.HEALTHY, "answered a ping")
                        return agent
                if self.endpoint is None:
                    raise errors.Unavailable(f"VM {self.vm_id} has no agent channel")
                # A serial channel serves one connection at a time: the dead one must be gone first.
                if agent is not None:
                    await close_agent(agent)
                    self.client = None
                try:
                    self.client = await wait_ready(self.endpoint, max(budget, 0.1))
                except (AgentUnreachable, ProtocolError) as exc:
                    self.mark(AgentHealth.UNRESPONSIVE, f"cannot connect: {one_line(exc)}")
                    raise errors.Unavailable(
                        f"agent of VM {self.vm_id} not reachable: {one_line(exc)}"
                    ) from exc
                instruments.AGENT_RECONNECTS.inc()
                self._answered_at = loop.time()
                self.mark(AgentHealth.HEALTHY, "answered a new connection")
                return self.client
        except TimeoutError:
            raise self.too_late("answer", budget, deadline) from None

    async def check(self) -> None:
        """One health check: a ping within ``HEALTH_PING_TIMEOUT``. Silent for longer than a call may
        wait: the connection is given up, so its streams fail at once (an exec without --timeout gets
        UNAVAILABLE instead of waiting forever), and the next call opens a fresh one (an agent
        restarted in the guest is found again through the resync handshake)."""
        try:
            await self.connected(limits.HEALTH_PING_TIMEOUT)
            return
        except errors.ServerError:
            pass  # recorded in self.health by connected()
        health, agent = self.health, self.client
        silent_for = time.time() - health.since
        silent = health.health is AgentHealth.UNRESPONSIVE and silent_for >= self.agent_timeout
        if silent and agent is not None and agent.connected:
            log.warning("VM %s: agent silent for %.0fs, dropping its connection", self.vm_id, silent_for)
            await close_agent(agent)
            if self.client is agent:
                self.client = None

    async def close(self) -> None:
        if self.client is not None:
            await close_agent(self.client)
            self.client = None


async def close_agent(agent: AgentClient) -> None:
    """Close an agent connection, bounded: closing waits for unsent data, which a wedged guest never
    reads; past the bound the socket is left to the VMM's end (or the next reconnect)."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(agent.close(), limits.HEALTH_PING_TIMEOUT)


def one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
