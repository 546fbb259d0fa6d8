"""Attacks that already held when the host side was tried as an attacker would (issue: the guest is the
attacker). They stay in the suite so they keep holding.

A real server in a network namespace, two real QEMU/TCG VMs shared by the module: one that an attack may
break (``victim``) and one that must not notice (``bystander``). Covered here: a 100 MB gRPC message,
50 concurrent execs, and the guest killing its own agent. (Bad vcpus/memory/ip and path-like ids are in
test_server_errors.py; spoofed addresses and isolation in test_network_isolation.py; kill -9 of the
server mid-create in test_server_restart.py; a ``cp`` destination that is a symlink in test_cli_flow.py.)
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Iterator

import grpc
import pytest
from server_harness import InstalledAssets, ServerProcess, code_of, server_in_namespace, wait_until

from clawpot.v1 import vm_pb2, vm_pb2_grpc

pytestmark = pytest.mark.integration

Code = grpc.StatusCode


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, installed_assets: InstalledAssets
) -> Iterator[ServerProcess]:
    # The default --agent-timeout (10 s): with 3 s, fifty execs forking python under TCG on a loaded
    # host kept the agent silent long enough for the node to drop a healthy connection.
    with server_in_namespace(tmp_path_factory.mktemp("held"), installed_assets, "--no-network") as srv:
        yield srv


@pytest.fixture(scope="module")
def bystander(server: ServerProcess) -> str:
    return server.create("--vmm", "qemu")


def _exec_out(api: object, vm_id: str, argv: list[str], timeout: float = 60) -> tuple[bytes, int]:
    request = vm_pb2.ExecRequest(start=vm_pb2.ExecStart(vm_id=vm_id, argv=argv))
    out = b""
    code = -2
    for reply in api.Exec(iter([request]), timeout=timeout):  # type: ignore[attr-defined]
        kind = reply.WhichOneof("kind")
        if kind == "stdout":
            out += reply.stdout
        elif kind == "exit":
            code = reply.exit.exit_code
    return out, code


def test_a_100mb_message_is_refused_and_the_server_keeps_serving(
    server: ServerProcess, bystander: str
) -> None:
    rss_before = server.rss_kib()
    huge = "x" * (100 * 1024 * 1024)
    options = [("grpc.max_send_message_length", 200 * 1024 * 1024)]
    with grpc.insecure_channel(server.url, options=options) as channel:
        api = vm_pb2_grpc.VmServiceStub(channel)
        code, message = code_of(lambda: api.CreateVm(vm_pb2.CreateVmRequest(labels={"k": huge}), timeout=60))
    assert code == Code.RESOURCE_EXHAUSTED, (code, message)
    with server.stub() as api:
        assert bystander in {vm.id for vm in api.ListVms(vm_pb2.ListVmsRequest(), timeout=30).vms}
        assert _exec_out(api, bystander, ["echo", "ok"]) == (b"ok\n", 0)
    # gRPC refused the message before it reached us: the server never held it.
    assert server.rss_kib() - rss_before < 64 * 1024


def test_fifty_concurrent_execs_all_answer(server: ServerProcess, bystander: str) -> None:
    with server.stub() as api:

        def run(i: int) -> tuple[bytes, int]:
            return _exec_out(api, bystander, ["echo", str(i)], timeout=120)

        with concurrent.futures.ThreadPoolExecutor(50) as pool:
            results = list(pool.map(run, range(50)))
    assert results == [(f"{i}\n".encode(), 0) for i in range(50)]


def test_a_guest_that_kills_its_agent_hurts_only_itself(server: ServerProcess, bystander: str) -> None:
    victim = server.create("--vmm", "qemu")
    # The agent starts commands itself, so the shell's parent is the agent. The exec that kills it is in
    # flight when it dies: that call must end, not hang.
    started = time.monotonic()
    result = server.exec(victim, "sh", "-c", "kill -9 $PPID; sleep 30")
    assert result.returncode != 0
    assert time.monotonic() - started < 30, "the exec outlived its agent"
    assert "\n" not in result.stderr.strip(), result.stderr

    def victim_unusable() -> bool:
        state = server.vms()[victim].state
        if state == vm_pb2.VM_STATE_ERROR:
            return True
        return server.exec(victim, "true", timeout=60).returncode != 0

    wait_until(victim_unusable, 60, "the victim to be reported broken")
    with server.stub() as api:
        assert _exec_out(api, bystander, ["echo", "still here"]) == (b"still here\n", 0)
    server.cli_ok("delete", victim)
    assert victim not in server.vms()
    assert victim not in server.vm_dirs()
    assert victim not in server.vmm_pids()
