"""The real ``e2b`` SDK (sync and async) against a real clawpot-server with real QEMU/TCG VMs in a
network namespace: the control plane (create, get_info, list with a metadata filter, connect,
set_timeout, pause/resume, metrics, fork, snapshots and a sandbox made from one, kill), a lifetime
that ends and deletes the VM, a wrong key, a missing sandbox. Two sandboxes for the whole module (cold
boots are the expensive part); forks and restores are the cheap kind of VM."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from e2b import (
    ALL_TRAFFIC,
    AsyncSandbox,
    AuthenticationException,
    NotFoundException,
    Sandbox,
    SandboxException,
    SandboxQuery,
    SandboxState,
)
from e2b_harness import E2bEndpoint, e2b_server
from server_harness import InstalledAssets, ServerProcess, proc_exists, wait_until

# A test that hangs instead of raising must still end: every missing-sandbox call gets this long.
QUICK = 20.0


@pytest.fixture(scope="module")
def e2b(
    tmp_path_factory: pytest.TempPathFactory, installed_assets: InstalledAssets
) -> Iterator[tuple[ServerProcess, E2bEndpoint]]:
    with e2b_server(tmp_path_factory.mktemp("e2b"), installed_assets) as pair:
        yield pair


@pytest.fixture(scope="module")
def suite_tag() -> str:
    return secrets.token_hex(4)


@pytest.fixture(scope="module")
def sandbox(e2b: tuple[ServerProcess, E2bEndpoint], suite_tag: str) -> Iterator[Sandbox]:
    _, endpoint = e2b
    sbx = Sandbox.create(timeout=600, metadata={"suite": suite_tag, "kind": "sync"}, **endpoint.opts())
    yield sbx
    Sandbox.kill(sbx.sandbox_id, **endpoint.opts())


def test_create_get_info_and_is_running(e2b: tuple[ServerProcess, E2bEndpoint], sandbox: Sandbox) -> None:
    server, endpoint = e2b
    assert sandbox.sandbox_id in server.vms()  # a sandbox IS a Clawpot VM, same id
    assert sandbox.is_running()
    info = sandbox.get_info()
    assert info.sandbox_id == sandbox.sandbox_id and info.template_id == "base"
    assert info.state == SandboxState.RUNNING
    assert info.metadata["kind"] == "sync"
    assert info.cpu_count == 1 and info.memory_mb == 256
    remaining = (info.end_at - datetime.now(UTC)).total_seconds()
    assert 500 < remaining <= 600
    # The same through the class method and the three environment variables.
    same = Sandbox.get_info(sandbox.sandbox_id, **endpoint.opts())
    assert same.started_at == info.started_at


def test_environment_variables_are_enough(
    e2b: tuple[ServerProcess, E2bEndpoint], sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, endpoint = e2b
    for name, value in endpoint.env().items():
        monkeypatch.setenv(name, value)
    info = Sandbox.get_info(sandbox.sandbox_id, request_timeout=60)
    assert info.sandbox_id == sandbox.sandbox_id


def test_list_filters_by_metadata(
    e2b: tuple[ServerProcess, E2bEndpoint], sandbox: Sandbox, suite_tag: str
) -> None:
    _, endpoint = e2b
    found = Sandbox.list(query=SandboxQuery(metadata={"suite": suite_tag, "kind": "sync"}), **endpoint.opts())
    assert [s.sandbox_id for s in found.next_items()] == [sandbox.sandbox_id]
    assert not found.has_next
    nothing = Sandbox.list(query=SandboxQuery(metadata={"suite": "no such tag"}), **endpoint.opts())
    assert nothing.next_items() == []
    running = Sandbox.list(query=SandboxQuery(state=[SandboxState.RUNNING]), limit=1, **endpoint.opts())
    assert len(running.next_items()) == 1


def test_connect_set_timeout_and_metrics(e2b: tuple[ServerProcess, E2bEndpoint], sandbox: Sandbox) -> None:
    _, endpoint = e2b
    again = Sandbox.connect(sandbox.sandbox_id, **endpoint.opts())
    assert again.sandbox_id == sandbox.sandbox_id
    sandbox.set_timeout(1200)
    end = sandbox.get_info().end_at
    assert 1100 < (end - datetime.now(UTC)).total_seconds() <= 1200
    Sandbox.connect(sandbox.sandbox_id, timeout=60, **endpoint.opts())  # connect never shortens
    assert sandbox.get_info().end_at == end
    metrics = sandbox.get_metrics()
    assert len(metrics) == 1 and metrics[0].mem_total == 256 << 20 and metrics[0].mem_used > 0


def test_pause_and_resume_by_connect(e2b: tuple[ServerProcess, E2bEndpoint], sandbox: Sandbox) -> None:
    _, endpoint = e2b
    assert sandbox.pause() is True
    assert sandbox.get_info().state == SandboxState.PAUSED
    assert sandbox.pause() is False  # already paused
    assert not sandbox.is_running()  # its envd does not answer while paused
    paused = Sandbox.list(query=SandboxQuery(state=[SandboxState.PAUSED]), **endpoint.opts()).next_items()
    assert sandbox.sandbox_id in [s.sandbox_id for s in paused]
    resumed = Sandbox.connect(sandbox.sandbox_id, timeout=900, **endpoint.opts())
    assert resumed.get_info().state == SandboxState.RUNNING
    assert resumed.is_running()


def test_wrong_or_missing_key_is_authentication_exception(e2b: tuple[ServerProcess, E2bEndpoint]) -> None:
    _, endpoint = e2b
    with pytest.raises(AuthenticationException):
        Sandbox.list(**endpoint.opts(api_key="e2b_" + "0" * 40)).next_items()
    with pytest.raises(AuthenticationException):
        Sandbox.create(**endpoint.opts(api_key="wrong"))


def test_a_missing_sandbox_is_not_found_not_a_hang(e2b: tuple[ServerProcess, E2bEndpoint]) -> None:
    _, endpoint = e2b
    opts = endpoint.opts(request_timeout=QUICK)
    started = time.monotonic()
    with pytest.raises(NotFoundException):
        Sandbox.connect("deadbeef", **opts)
    with pytest.raises(NotFoundException):
        Sandbox.get_info("deadbeef", **opts)
    with pytest.raises(NotFoundException):
        Sandbox.set_timeout("deadbeef", 30, **opts)
    assert Sandbox.kill("deadbeef", **opts) is False
    assert time.monotonic() - started < QUICK


def test_an_unknown_template_or_an_inexpressible_policy_is_refused(
    e2b: tuple[ServerProcess, E2bEndpoint],
) -> None:
    server, endpoint = e2b
    before = set(server.vms())
    with pytest.raises(SandboxException, match="template 'code-interpreter-v1' not found"):
        Sandbox.create("code-interpreter-v1", **endpoint.opts())
    with pytest.raises(SandboxException, match="partial denyOut"):
        Sandbox.create(network={"deny_out": ["10.0.0.0/8"], "allow_out": ["10.1.2.3"]}, **endpoint.opts())
    assert set(server.vms()) == before


async def test_async_lifecycle_and_expiry_deletes_the_vm(
    e2b: tuple[ServerProcess, E2bEndpoint], suite_tag: str
) -> None:
    server, endpoint = e2b
    sbx = await AsyncSandbox.create(
        timeout=300,
        metadata={"suite": suite_tag, "kind": "async"},
        network={"deny_out": [ALL_TRAFFIC], "allow_out": ["10.9.8.0/24"]},
        **endpoint.opts(),
    )
    sid = sbx.sandbox_id
    # E2B's egress options became the VM's egress policy (an allow list).
    egress = server.vms()[sid].egress
    assert (list(egress.allow_out), list(egress.deny_out), egress.no_internet) == (["10.9.8.0/24"], [], False)
    assert await sbx.is_running()
    info = await AsyncSandbox.get_info(sid, **endpoint.opts())
    assert info.metadata == {"suite": suite_tag, "kind": "async"}
    page = AsyncSandbox.list(
        query=SandboxQuery(metadata={"kind": "async", "suite": suite_tag}), **endpoint.opts()
    )
    assert [s.sandbox_id for s in await page.next_items()] == [sid]
    same = await AsyncSandbox.connect(sid, **endpoint.opts())
    assert same.sandbox_id == sid
    assert await sbx.pause() is True
    assert (await sbx.get_info()).state == SandboxState.PAUSED
    assert not await sbx.is_running()
    resumed = await AsyncSandbox.connect(sid, timeout=300, **endpoint.opts())
    assert (await resumed.get_info()).state == SandboxState.RUNNING

    qemu_pid = server.vmm_pids()[sid]
    await sbx.set_timeout(3)  # the lifetime now ends in 3 s: the VM must then be deleted
    deadline = time.monotonic() + 60
    while sid in server.vms():
        assert time.monotonic() < deadline, "the expired sandbox was not deleted"
        await asyncio.sleep(0.5)
    with pytest.raises(NotFoundException):
        await AsyncSandbox.get_info(sid, **endpoint.opts(request_timeout=QUICK))
    assert not await sbx.is_running()
    wait_until(lambda: not proc_exists(qemu_pid), 30, "QEMU of the expired VM to exit")
    assert sid not in server.vm_dirs()
    assert server.db_rows(f"SELECT id FROM vms WHERE id = '{sid}'") == []
    assert server.db_rows(f"SELECT id FROM vm_lifetimes WHERE id = '{sid}'") == []


async def test_async_kill_and_wrong_key(e2b: tuple[ServerProcess, E2bEndpoint]) -> None:
    _, endpoint = e2b
    with pytest.raises(AuthenticationException):
        await AsyncSandbox.get_info("deadbeef", **endpoint.opts(api_key="wrong"))
    with pytest.raises(NotFoundException):
        await AsyncSandbox.connect("deadbeef", **endpoint.opts(request_timeout=QUICK))
    assert await AsyncSandbox.kill("deadbeef", **endpoint.opts()) is False


def test_fork_copies_the_sandbox_then_each_goes_its_own_way(
    e2b: tuple[ServerProcess, E2bEndpoint], sandbox: Sandbox
) -> None:
    server, endpoint = e2b
    sandbox.files.write("/tmp/fork-probe", "before")
    results = sandbox.fork(timeout=120)
    assert len(results) == 1 and isinstance(results[0], Sandbox), results
    copy = results[0]
    try:
        assert copy.sandbox_id != sandbox.sandbox_id and copy.sandbox_id in server.vms()
        assert server.vms()[copy.sandbox_id].forked_from == sandbox.sandbox_id
        info = copy.get_info()
        assert info.metadata == sandbox.get_info().metadata and info.state == SandboxState.RUNNING
        assert 100 < (info.end_at - datetime.now(UTC)).total_seconds() <= 120
        assert copy.files.read("/tmp/fork-probe") == "before"  # written before the fork: copied
        sandbox.files.write("/tmp/fork-probe", "source after")  # after it: not shared, either way
        copy.files.write("/tmp/fork-probe", "copy after")
        assert copy.files.read("/tmp/fork-probe") == "copy after"
        assert sandbox.files.read("/tmp/fork-probe") == "source after"
        assert copy.commands.run("echo $$").exit_code == 0
    finally:
        Sandbox.kill(copy.sandbox_id, **endpoint.opts())
    with pytest.raises(NotFoundException):
        Sandbox.fork("deadbeef", **endpoint.opts(request_timeout=QUICK))


def test_snapshot_list_create_from_it_and_delete(
    e2b: tuple[ServerProcess, E2bEndpoint], sandbox: Sandbox
) -> None:
    server, endpoint = e2b
    sandbox.files.write("/tmp/snapshot-probe", "in the snapshot")
    snap = sandbox.create_snapshot()
    assert sandbox.is_running()  # the source runs on
    sandbox.files.write("/tmp/snapshot-probe", "after the snapshot")
    mine = sandbox.list_snapshots().next_items()
    assert [s.snapshot_id for s in mine] == [snap.snapshot_id]
    assert snap.snapshot_id in [s.snapshot_id for s in Sandbox.list_snapshots(**endpoint.opts()).next_items()]
    restored = Sandbox.create(snap.snapshot_id, timeout=120, **endpoint.opts())
    try:
        assert server.vms()[restored.sandbox_id].snapshot == snap.snapshot_id.partition(":")[0]
        assert restored.files.read("/tmp/snapshot-probe") == "in the snapshot"
    finally:
        Sandbox.kill(restored.sandbox_id, **endpoint.opts())
    assert Sandbox.delete_snapshot(snap.snapshot_id, **endpoint.opts()) is True
    assert Sandbox.delete_snapshot(snap.snapshot_id, **endpoint.opts()) is False
    assert sandbox.list_snapshots().next_items() == []


async def test_async_fork_and_snapshots(e2b: tuple[ServerProcess, E2bEndpoint], sandbox: Sandbox) -> None:
    server, endpoint = e2b
    source = await AsyncSandbox.connect(sandbox.sandbox_id, **endpoint.opts())
    (copy,) = await source.fork()
    assert isinstance(copy, AsyncSandbox), copy
    try:
        assert server.vms()[copy.sandbox_id].forked_from == sandbox.sandbox_id
        assert (await copy.commands.run("echo forked")).stdout == "forked\n"
        end_at = (await copy.get_info()).end_at
        assert (end_at - datetime.now(UTC)).total_seconds() <= 15  # E2B's default fork timeout
    finally:
        await AsyncSandbox.kill(copy.sandbox_id, **endpoint.opts())
    name = f"named-{secrets.token_hex(3)}"
    snap = await source.create_snapshot(name=name)
    assert snap.snapshot_id == f"{name}:default" and snap.names == [snap.snapshot_id]
    page = AsyncSandbox.list_snapshots(sandbox_id=sandbox.sandbox_id, **endpoint.opts())
    assert [s.snapshot_id for s in await page.next_items()] == [snap.snapshot_id]
    with pytest.raises(SandboxException, match="already exists"):
        await source.create_snapshot(name=name)
    assert await AsyncSandbox.delete_snapshot(snap.snapshot_id, **endpoint.opts()) is True
    assert await AsyncSandbox.delete_snapshot(snap.snapshot_id, **endpoint.opts()) is False


def test_kill(e2b: tuple[ServerProcess, E2bEndpoint], suite_tag: str) -> None:
    """Last in the module: kills the shared sandbox (its fixture's kill then answers False)."""
    server, endpoint = e2b
    tagged = Sandbox.list(query=SandboxQuery(metadata={"suite": suite_tag}), **endpoint.opts()).next_items()
    assert len(tagged) == 1
    sid = tagged[0].sandbox_id
    assert Sandbox.kill(sid, **endpoint.opts()) is True
    assert sid not in server.vms() and sid not in server.vm_dirs()
