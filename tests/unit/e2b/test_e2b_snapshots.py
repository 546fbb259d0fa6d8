"""E2B's fork and snapshot endpoints over a real Service and node on the fake VMM, through ASGI, every
answer parsed with the SDK's own generated models (``SandboxForkResult``, ``SnapshotInfo``).

FAKE: the fake VMM (tests/support/fake_vmm.py) cannot snapshot or restore (there is no guest memory),
so the node's step that writes a snapshot (``_snapshot_to``) is replaced by a writer of real snapshot
files (a sealed manifest, ``clawpot.vmm.snapshot.SnapshotWriter``) and ``Service.fork`` by cold boots
of the same shape; everything above them (the REST layer, attributes, lifetimes, the snapshot catalog,
its delete rules) is the real code. Real forks, snapshots and restores through the real SDK are
tests/integration/test_e2b_sdk.py.
"""

from __future__ import annotations

import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2b.api.client.models import Sandbox as SandboxModel
from e2b.api.client.models import SandboxForkResult, SnapshotInfo
from support.fake_vmm import FakeVmmBackend

from clawpot.e2b.app import create_app
from clawpot.e2b.context import E2bContext
from clawpot.e2b.rest import app as rest_app
from clawpot.e2b.rest import snapshots
from clawpot.e2b.sandboxes import load_attrs
from clawpot.node.lifetimes import Expiry
from clawpot.node.node import Node
from clawpot.node.vms import NodeVm, VmView
from clawpot.service.service import CreateParams, Service
from clawpot.vmm.base import Feature
from clawpot.vmm.snapshot import SnapshotWriter, spec_entry
from clawpot.vmm.spec import BackendKind, Drive, VmSpec

TOKEN = "k" * 43


@pytest.fixture
def service(node: Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Service:
    kernel, rootfs = tmp_path / "vmlinux", tmp_path / "rootfs.ext4"
    kernel.write_bytes(b"kernel")
    rootfs.write_bytes(b"rootfs")

    async def snapshot_to(nvm: NodeVm, directory: Path, action: str) -> None:  # FAKE: module docstring
        spec = VmSpec(kernel, "console=ttyS0", (Drive("rootfs", rootfs, read_only=True),))
        with SnapshotWriter(directory) as writer:
            writer.seal(backend=BackendKind.QEMU, backend_version="fake", spec=spec_entry(spec, {}))

    monkeypatch.setattr(node, "_snapshot_to", snapshot_to)
    svc = Service(node)
    real_create = svc.create
    created: list[CreateParams] = []

    async def fork(vm_id: str, count: int) -> list[VmView]:  # FAKE: cold boots stand in for copies
        node.check_fork(vm_id)
        return [await real_create(CreateParams()) for _ in range(count)]

    async def create(params: CreateParams) -> VmView:  # FAKE: no restore here; the request is kept
        created.append(params)
        if params.from_snapshot is not None:
            node.snapshots.info(params.from_snapshot)  # NOT_FOUND as the real restore would
            params = CreateParams(timeout=params.timeout, on_expiry=params.on_expiry)
        return await real_create(params)

    monkeypatch.setattr(svc, "fork", fork)
    monkeypatch.setattr(svc, "create", create)
    svc.created = created  # type: ignore[attr-defined]
    return svc


@pytest.fixture
async def api(service: Service, backend: FakeVmmBackend) -> AsyncIterator[httpx.AsyncClient]:
    # The capabilities a fork checks; what would use them is replaced (see the module docstring).
    backend.features = Feature.PAUSE | Feature.SNAPSHOT | Feature.RESTORE
    app = create_app(E2bContext(service=service, token=TOKEN))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://e2b", headers={"X-API-Key": TOKEN}
    ) as c:
        yield c


async def _create(api: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    reply = await api.post("/v2/sandboxes", json={"templateID": "base", **body})
    assert reply.status_code == 201, reply.text
    data: dict[str, Any] = reply.json()
    SandboxModel.from_dict(data)
    return data


def _error(reply: httpx.Response, status: int) -> str:
    assert reply.status_code == status, reply.text
    assert reply.json()["code"] == status
    return str(reply.json()["message"])


async def test_fork_answers_one_result_per_copy_with_the_source_s_attributes(
    api: httpx.AsyncClient, node: Node
) -> None:
    source = await _create(api, metadata={"app": "x"}, envVars={"FOO": "1"}, autoPause=True)
    reply = await api.post(f"/sandboxes/{source['sandboxID']}/fork", json={"count": 2, "timeout": 60})
    assert reply.status_code == 201, reply.text
    results = [SandboxForkResult.from_dict(item) for item in reply.json()]
    assert len(results) == 2
    tokens = {source["envdAccessToken"]}
    for result in results:
        sandbox = result.sandbox
        assert isinstance(sandbox, SandboxModel) and sandbox.sandbox_id != source["sandboxID"]
        assert isinstance(sandbox.envd_access_token, str)
        tokens.add(sandbox.envd_access_token)
        nvm = node.get(sandbox.sandbox_id)
        attrs = load_attrs(nvm.record.vm_dir)
        assert attrs is not None and attrs.metadata == {"app": "x"} and attrs.env_vars == {"FOO": "1"}
        assert attrs.envd_access_token == sandbox.envd_access_token and attrs.auto_pause
        assert nvm.lifetime is not None and 50 < nvm.lifetime.expires_at - time.time() <= 60
        assert nvm.lifetime.on_expiry is Expiry.PAUSE
    assert len(tokens) == 3  # a fresh token for each copy


async def test_fork_defaults_and_refusals(api: httpx.AsyncClient, node: Node) -> None:
    source = await _create(api)
    reply = await api.post(f"/sandboxes/{source['sandboxID']}/fork")  # empty body: E2B's defaults
    assert reply.status_code == 201, reply.text
    (only,) = reply.json()
    lifetime = node.get(only["sandbox"]["sandboxID"]).lifetime
    assert lifetime is not None and lifetime.expires_at - time.time() <= 15
    assert "count" in _error(await api.post(f"/sandboxes/{source['sandboxID']}/fork", json={"count": 0}), 400)
    assert "not found" in _error(await api.post("/sandboxes/nope/fork", json={}), 404)
    assert (await api.post(f"/sandboxes/{source['sandboxID']}/pause")).status_code == 204
    assert "Paused" in _error(await api.post(f"/sandboxes/{source['sandboxID']}/fork", json={}), 409)


async def test_a_fork_that_cannot_record_its_copies_leaves_none(
    api: httpx.AsyncClient, node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = await _create(api)
    before = set(node.vms)

    def refuse(vm_dir: Path, attrs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(rest_app, "save_attrs", refuse)
    reply = await api.post(f"/sandboxes/{source['sandboxID']}/fork", json={"count": 2})
    assert "No space left" in _error(reply, 503)
    assert set(node.vms) == before  # both copies deleted


async def test_snapshot_list_create_from_and_delete(
    api: httpx.AsyncClient, node: Node, service: Service
) -> None:
    source = await _create(api, envVars={"FOO": "1", "BAR": "2"})
    sid = source["sandboxID"]
    reply = await api.post(f"/sandboxes/{sid}/snapshots", json={})
    assert reply.status_code == 201, reply.text
    generated = SnapshotInfo.from_dict(reply.json())
    assert generated.snapshot_id.endswith(":default") and generated.names == [generated.snapshot_id]
    reply = await api.post(f"/sandboxes/{sid}/snapshots", json={"name": "mine"})
    named = SnapshotInfo.from_dict(reply.json())
    assert named.snapshot_id == "mine:default"
    source_file = node.snapshots.path("mine") / snapshots.SOURCE_FILE
    assert stat.S_IMODE(source_file.stat().st_mode) == 0o600  # it holds the env vars
    take = f"/sandboxes/{sid}/snapshots"
    assert "already exists" in _error(await api.post(take, json={"name": "mine"}), 409)
    assert "invalid snapshot name" in _error(await api.post(take, json={"name": "a/b"}), 400)
    assert "filesystem-only" in _error(await api.post(take, json={"memory": False}), 400)
    assert "not found" in _error(await api.post("/sandboxes/nope/snapshots", json={}), 404)

    # Listed, filtered by source sandbox and by name, paged with X-Next-Token.
    listed = [SnapshotInfo.from_dict(s).snapshot_id for s in (await api.get("/snapshots")).json()]
    assert listed == [generated.snapshot_id, "mine:default"]
    assert len((await api.get("/snapshots", params={"sandboxID": sid})).json()) == 2
    assert (await api.get("/snapshots", params={"sandboxID": "other"})).json() == []
    assert [s["snapshotID"] for s in (await api.get("/snapshots", params={"name": "mine"})).json()] == [
        "mine:default"
    ]
    first = await api.get("/snapshots", params={"limit": 1})
    assert [s["snapshotID"] for s in first.json()] == [generated.snapshot_id]
    second = await api.get("/snapshots", params={"limit": 1, "nextToken": first.headers["x-next-token"]})
    assert [s["snapshotID"] for s in second.json()] == ["mine:default"]
    assert "x-next-token" not in second.headers

    # Sandbox.create(snapshot_id): the snapshot restored, its envd env kept under the new ones.
    restored = await _create(api, templateID="mine:default", envVars={"BAR": "3"})
    assert restored["templateID"] == "mine:default"
    params = service.created[-1]  # type: ignore[attr-defined]
    assert params.from_snapshot == "mine" and params.vcpus == 0 and params.memory_mib == 0
    attrs = load_attrs(node.get(restored["sandboxID"]).record.vm_dir)
    assert attrs is not None and attrs.env_vars == {"FOO": "1", "BAR": "3"}
    assert "not found" in _error(await api.post("/v2/sandboxes", json={"templateID": "mine:v7"}), 404)

    # Delete: 204, then 404 (the SDK's False); the bare name is an id too.
    assert (await api.delete("/templates/mine%3Adefault")).status_code == 204
    assert "not found" in _error(await api.delete("/templates/mine:default"), 404)
    name = snapshots.name_of(generated.snapshot_id)
    assert name is not None and (await api.delete(f"/templates/{name}")).status_code == 204
    assert (await api.get("/snapshots")).json() == []
    assert not any(p.name.startswith(name) for p in node.snapshots.root.iterdir())


def test_snapshot_ids_and_names() -> None:
    assert snapshots.name_of("abc") == "abc" and snapshots.name_of("abc:latest") == "abc"
    assert snapshots.name_of("abc:v2") is None and snapshots.name_of("team/abc:default") is None
    assert snapshots.name_of(".hidden") is None
    assert snapshots.new_name("x:default") == "x"
    assert snapshots.name_of(snapshots.new_name(None)) is not None
