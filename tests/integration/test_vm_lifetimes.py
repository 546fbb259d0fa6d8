"""VM lifetimes with the real CLI, server and QEMU/TCG VMs in a namespace: ``create --timeout``, a
deadline that is stored and acts across a server restart, ``clawpot timeout`` extending and removing
it, and an expired VM leaving nothing behind (process, directory, TAP, rows). One VM for the restart
story, one for the rest."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime

import pytest
from server_harness import InstalledAssets, ServerProcess, proc_exists, server_in_namespace, wait_until

from clawpot.v1 import vm_pb2


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, installed_assets: InstalledAssets
) -> Iterator[ServerProcess]:
    with server_in_namespace(tmp_path_factory.mktemp("lifetimes"), installed_assets) as srv:
        yield srv


def _expires_at(server: ServerProcess, vm_id: str) -> float | None:
    """The VM's deadline as the API reports it (through gRPC: a CLI process per look is slow)."""
    with server.stub() as api:
        vm = api.GetVm(vm_pb2.GetVmRequest(id=vm_id), timeout=30)
    return vm.expires_at.ToNanoseconds() / 1e9 if vm.HasField("expires_at") else None


def _nothing_left(server: ServerProcess, vm_id: str, qemu_pid: int) -> None:
    wait_until(lambda: vm_id not in server.vms(), 60, f"VM {vm_id} to be deleted")
    wait_until(lambda: not proc_exists(qemu_pid), 30, "its QEMU to exit")
    assert vm_id not in server.vm_dirs()
    assert server.db_rows(f"SELECT id FROM vms WHERE id = '{vm_id}'") == []
    assert server.db_rows(f"SELECT id FROM vm_lifetimes WHERE id = '{vm_id}'") == []
    assert server.taps() == set() or all(vm_id[:8] not in tap for tap in server.taps())


def test_a_20_s_lifetime_expires_across_a_server_restart(server: ServerProcess) -> None:
    asked = time.time()
    vm_id = server.create("--timeout", "20")
    deadline = _expires_at(server, vm_id)
    assert deadline is not None and asked + 19 <= deadline <= time.time() + 20
    qemu_pid = server.vmm_pids()[vm_id]

    # Stop the server (its VMs stay up) and bring it back once the deadline has passed meanwhile.
    assert server.terminate() == 0
    assert proc_exists(qemu_pid)
    time.sleep(max(0.0, deadline + 1 - time.time()))
    assert proc_exists(qemu_pid)  # nothing acted while no server ran
    server.start()
    _nothing_left(server, vm_id, qemu_pid)


def test_timeout_extends_removes_and_shortens(server: ServerProcess) -> None:
    vm_id = server.create("--timeout", "600")
    qemu_pid = server.vmm_pids()[vm_id]
    first = _expires_at(server, vm_id)
    assert first is not None

    printed = server.cli_ok("timeout", vm_id, "1200").strip()
    extended = _expires_at(server, vm_id)
    assert extended is not None and extended > first + 500
    assert datetime.fromisoformat(printed.replace("Z", "+00:00")).timestamp() == pytest.approx(
        extended, abs=1
    )
    assert server.db_rows(f"SELECT expires_at FROM vm_lifetimes WHERE id = '{vm_id}'") == [
        (pytest.approx(extended, abs=0.01),)
    ]

    assert server.cli_ok("timeout", vm_id, "0").strip() == "never"
    assert _expires_at(server, vm_id) is None
    assert server.db_rows(f"SELECT id FROM vm_lifetimes WHERE id = '{vm_id}'") == []

    bad = server.cli("timeout", vm_id, "-5")  # the bounds themselves: tests/unit/node/test_node_lifetimes.py
    assert bad.returncode == 2, bad.stderr
    missing = server.cli("timeout", "nosuchvm", "10")
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr

    server.cli_ok("timeout", vm_id, "2")  # shortened: it ends in 2 s
    _nothing_left(server, vm_id, qemu_pid)
