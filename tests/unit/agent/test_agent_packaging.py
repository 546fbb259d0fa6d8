"""The agent ships into the guest as the top-level package ``clawpot_agent`` and runs on the guest's bare
python3: standard library only, relative imports only."""

from __future__ import annotations

import ast
import shutil
import sys
from pathlib import Path

from agent_harness import start_agent, stop_agent

import clawpot.agent
from clawpot.agent_client import wait_ready

AGENT_DIR = Path(clawpot.agent.__file__).parent


def test_imports_are_stdlib_or_relative() -> None:
    offenders = []
    for source in sorted(AGENT_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(source.read_text(), str(source))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top != "__future__" and top not in sys.stdlib_module_names:
                    offenders.append(f"{source.name}:{node.lineno}: {name}")
    assert not offenders, "non-stdlib or absolute package imports in the agent: " + ", ".join(offenders)


async def test_runs_as_clawpot_agent_without_site_packages(tmp_path: Path) -> None:
    package = tmp_path / "opt" / "clawpot_agent"
    shutil.copytree(AGENT_DIR, package, ignore=shutil.ignore_patterns("__pycache__"))
    # -S: no site-packages, so nothing but the standard library and the copied package can be imported.
    agent = start_agent(tmp_path / "run", python_args=("-S",), module="clawpot_agent", cwd=package.parent)
    try:
        async with await wait_ready(agent.endpoint, 10) as client:
            result = await client.run(["uname", "-a"])
            assert result.ok
            assert result.stdout.startswith(b"Linux ")
        assert "clawpot_agent.connection" in agent.log_text()
    finally:
        stop_agent(agent)
