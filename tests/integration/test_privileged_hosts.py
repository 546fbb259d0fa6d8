"""Host-side tests that need privileges the unit suite must not (it runs with every capability dropped).

Moved from tests/unit: a bind mount (CAP_SYS_ADMIN) and a PID namespace (CAP_SYS_ADMIN for unshare).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
from pathlib import Path

from support.agent_harness import start_agent, stop_agent, wait_until

from clawpot.agent_client import wait_ready
from clawpot.assets.cache import mounts_under, remove_tree


def test_removal_never_reaches_into_a_mount(tmp_path: Path, root_required: None) -> None:
    """What a hard-killed mmdebstrap leaves: a bind mount inside the build directory."""
    precious = tmp_path / "host-dir"
    precious.mkdir()
    (precious / "keep").write_text("host file")
    build = tmp_path / "build"
    (build / "chroot" / "dev").mkdir(parents=True)
    subprocess.run(["mount", "--bind", str(precious), str(build / "chroot" / "dev")], check=True)
    try:
        assert mounts_under(build) == [build / "chroot" / "dev"]
        remove_tree(build)
    finally:
        subprocess.run(["umount", str(build / "chroot" / "dev")], capture_output=True, check=False)
    assert not build.exists()
    assert (precious / "keep").read_text() == "host file"


async def test_as_pid_1_the_agent_reaps_orphans(tmp_path: Path, root_required: None) -> None:
    """Without tini the guest init execs the agent as PID 1: orphans become its children."""
    unshare = shutil.which("unshare")
    assert unshare is not None, "unshare (util-linux) is needed"
    probe = await asyncio.to_thread(
        subprocess.run, [unshare, "--pid", "--fork", "true"], capture_output=True, text=True, check=False
    )
    assert probe.returncode == 0, f"cannot create a PID namespace here: {probe.stderr.strip()}"
    # No --guest: being PID 1 alone must never lead to a power-off.
    agent = start_agent(tmp_path, wrapper=(unshare, "--pid", "--fork", "--kill-child"))
    try:
        [(inner, _)] = _children_of(agent.pid)  # the agent, PID 1 of the new namespace
        async with await wait_ready(agent.endpoint, 10) as client:
            assert client.info.pid == 1
            result = await client.run(["sh", "-c", "sleep 1 >/dev/null 2>&1 & echo started"])
            assert result.ok
            # sh has exited: its background sleep now belongs to the agent.
            orphans = [pid for pid, _ in _children_of(inner)]
            assert len(orphans) == 1
            assert wait_until(lambda: not Path(f"/proc/{orphans[0]}").exists(), timeout=10), (
                "orphan not reaped"
            )
        os.kill(inner, signal.SIGTERM)  # unshare does not forward signals
        assert await asyncio.to_thread(agent.proc.wait, 10) == 0
    finally:
        stop_agent(agent)


def _children_of(pid: int) -> list[tuple[int, str]]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[1]) == pid:
                found.append((int(entry.name), fields[0]))
    return found
