"""The README's first command, for real: scripts/quickstart.sh starts the server, creates a VM, execs
in it and deletes it. Run inside a network namespace of its own (the server makes a bridge and NAT)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from server_harness import with_cgroups
from support.netns import NetNamespace

ROOT = Path(__file__).resolve().parents[2]


def test_quickstart_runs_the_main_job(root_required: None, installed_assets: object, qemu_bin: Path) -> None:
    with NetNamespace.create("clawpot-qs") as ns:
        result = subprocess.run(
            # `ip netns exec` hides the host's cgroups, where the VMMs' limits live: mount them again.
            ns.argv(with_cgroups([str(ROOT / "scripts" / "quickstart.sh")])),
            capture_output=True,
            text=True,
            timeout=300,
            stdin=subprocess.DEVNULL,
        )
    output = result.stdout + result.stderr
    print(output[-3000:])
    assert result.returncode == 0, output[-3000:]
    vm_id = re.search(r"clawpot delete (\S+)", output)
    assert vm_id, output
    assert re.search(r"Linux \S+ \d+\.\d+\.\d+.* x86_64", output), "uname -a did not run in the guest"
    assert "Running" in output
