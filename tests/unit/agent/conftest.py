"""Fixtures: one real agent process per test module, and a connected client per test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from agent_harness import AgentProcess, start_agent, stop_agent

from clawpot.agent_client import AgentClient, wait_ready


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    proc = start_agent(tmp_path_factory.mktemp("agent"))
    yield proc
    log = proc.log_text()
    stop_agent(proc)
    assert "Traceback" not in log, f"agent logged a traceback:\n{log}"


@pytest.fixture
async def client(agent: AgentProcess) -> AsyncIterator[AgentClient]:
    c = await wait_ready(agent.endpoint, 10)
    yield c
    await c.close()
