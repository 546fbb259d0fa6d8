"""E2B's control plane over a real Service and node on the fake VMM (a real agent process stands in
for the hypervisor: tests/support/fake_vmm.py), called through ASGI. Every answer is parsed with the
real SDK's generated models (``e2b.api.client.models``), so a shape the SDK cannot read fails here.
The real-VM, real-SDK proof is tests/integration/test_e2b_sdk.py."""

from __future__ import annotations

import asyncio
import json
import stat
import time
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from e2b.api.client.models import (
    ListedSandbox,
    SandboxDetail,
    SandboxLogs,
    SandboxLogsV2Response,
    SandboxMetric,
)
from e2b.api.client.models import Sandbox as SandboxModel
from support import fake_vmm
from support.fake_vmm import FakeVmmBackend

from clawpot.e2b.app import create_app
from clawpot.e2b.context import E2bContext
from clawpot.e2b.rest import listing
from clawpot.e2b.rest.bodies import Egress, NewSandbox
from clawpot.e2b.sandboxes import FILE_NAME
from clawpot.node import console
from clawpot.node.lifetimes import Expiry
from clawpot.node.node import Node
from clawpot.service.service import CreateParams, Service
from clawpot.vm.state import VmState
from clawpot.vmm.base import Feature

TOKEN = "k" * 43


@pytest.fixture
async def api(node: Node, backend: FakeVmmBackend) -> AsyncIterator[httpx.AsyncClient]:
    backend.features = Feature.PAUSE
    app = create_app(E2bContext(service=Service(node), token=TOKEN))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://e2b", headers={"X-API-Key": TOKEN}
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
    body = reply.json()
    assert body["code"] == status
    return str(body["message"])


async def test_create_answers_the_sdk_shape_and_records_the_sandbox(
    api: httpx.AsyncClient, node: Node
) -> None:
    data = await _create(api, timeout=120, metadata={"user": "a b", "app": "x"}, envVars={"FOO": "1"})
    sid = data["sandboxID"]
    assert data["templateID"] == "base" and data["clientID"] and data["envdVersion"] >= "0.1.0"
    assert data["envdAccessToken"]
    nvm = node.get(sid)
    assert nvm.record.state is VmState.RUNNING
    assert nvm.lifetime is not None and 110 < nvm.lifetime.expires_at - time.time() <= 120
    assert nvm.lifetime.on_expiry is Expiry.DELETE
    saved = nvm.record.vm_dir / FILE_NAME
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    stored = json.loads(saved.read_text())
    assert stored["env_vars"] == {"FOO": "1"} and stored["envd_access_token"] == data["envdAccessToken"]

    detail = (await api.get(f"/sandboxes/{sid}")).json()
    parsed = SandboxDetail.from_dict(detail)
    assert parsed.state.value == "running" and parsed.metadata == {"user": "a b", "app": "x"}
    assert detail["envdAccessToken"] == data["envdAccessToken"]
    assert detail["lifecycle"] == {"autoResume": False, "onTimeout": "kill"}


async def test_v2_create_defaults_to_300_s_and_v1_to_15_s(api: httpx.AsyncClient, node: Node) -> None:
    v2 = await _create(api)
    lifetime = node.get(v2["sandboxID"]).lifetime
    assert lifetime is not None and 290 < lifetime.expires_at - time.time() <= 300
    reply = await api.post("/sandboxes", json={"templateID": "base", "secure": False})
    assert reply.status_code == 201
    v1 = reply.json()
    assert "envdAccessToken" not in v1  # secure: false, as asked
    lifetime = node.get(v1["sandboxID"]).lifetime
    assert lifetime is not None and lifetime.expires_at - time.time() <= 15


async def test_auto_pause_is_the_lifetime_s_action(api: httpx.AsyncClient, node: Node) -> None:
    data = await _create(api, autoPause=True)
    lifetime = node.get(data["sandboxID"]).lifetime
    assert lifetime is not None and lifetime.on_expiry is Expiry.PAUSE
    detail = (await api.get(f"/sandboxes/{data['sandboxID']}")).json()
    assert detail["lifecycle"]["onTimeout"] == "pause"


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"templateID": "code-interpreter-v1"}, 404, "template 'code-interpreter-v1' not found"),
        # The fake-VMM node runs without networking: an egress policy cannot be honoured there.
        ({"templateID": "base", "allow_internet_access": False}, 400, "without networking"),
        ({"templateID": "base", "network": {"maskRequestHost": "x"}}, 400, "maskRequestHost"),
        (
            {"templateID": "base", "network": {"denyOut": ["10.0.0.0/8"], "allowOut": ["10.1.1.1"]}},
            400,
            "partial",
        ),
        ({"templateID": "base", "volumeMounts": [{"name": "v", "path": "/v"}]}, 400, "volume"),
        ({"templateID": "base", "envVars": {"1BAD": "x"}}, 400, "environment variable name"),
        ({"templateID": "base", "metadata": {"k": 1}}, 400, "metadata"),
        ({"templateID": "base", "timeout": -1}, 400, "timeout"),
        ({"templateID": "base", "timeout": 10**9}, 400, "timeout"),
        ({"timeout": 5}, 400, "templateID"),
    ],
)
async def test_bad_creates_are_refused_and_leave_nothing(
    api: httpx.AsyncClient, node: Node, body: dict[str, Any], status: int, needle: str
) -> None:
    assert needle in _error(await api.post("/v2/sandboxes", json=body), status)
    assert node.vms == {}


async def test_malformed_json_is_400(api: httpx.AsyncClient, node: Node) -> None:
    reply = await api.post(
        "/v2/sandboxes", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    _error(reply, 400)
    assert node.vms == {}


async def test_list_filters_by_metadata_and_state_and_pages(api: httpx.AsyncClient) -> None:
    a = (await _create(api, metadata={"team": "x y&z", "n": "1"}))["sandboxID"]
    b = (await _create(api, metadata={"team": "x y&z", "n": "2"}))["sandboxID"]
    c = (await _create(api, metadata={"team": "other"}))["sandboxID"]
    assert (await api.post(f"/sandboxes/{b}/pause")).status_code == 204

    # The SDK's own encoding of a metadata filter (e2b/sandbox_sync/paginator.py).
    quoted = urllib.parse.urlencode({urllib.parse.quote("team"): urllib.parse.quote("x y&z")})
    reply = await api.get("/v2/sandboxes", params={"metadata": quoted})
    listed = [ListedSandbox.from_dict(item) for item in reply.json()]
    assert {s.sandbox_id for s in listed} == {a, b}
    assert [s.sandbox_id for s in listed] == [b, a]  # newest first, E2B's default

    running = (await api.get("/v2/sandboxes", params={"metadata": quoted, "state": "running"})).json()
    assert [s["sandboxID"] for s in running] == [a]
    paused = (await api.get("/v2/sandboxes", params={"state": "paused"})).json()
    assert [s["sandboxID"] for s in paused] == [b] and paused[0]["state"] == "paused"
    v1 = (await api.get("/sandboxes")).json()  # v1: running sandboxes only
    assert {s["sandboxID"] for s in v1} == {a, c}

    seen: list[str] = []
    token: str | None = None
    for _ in range(5):
        params = {"limit": "1", "order": "asc", **({"nextToken": token} if token else {})}
        page = await api.get("/v2/sandboxes", params=params)
        seen += [s["sandboxID"] for s in page.json()]
        token = page.headers.get("x-next-token")
        if not token:
            break
    assert seen == [a, b, c]

    _error(await api.get("/v2/sandboxes", params={"nextToken": "garbage!"}), 400)
    _error(await api.get("/v2/sandboxes", params={"limit": "0"}), 400)
    _error(await api.get("/v2/sandboxes", params={"state": "dead"}), 400)


async def test_timeout_overwrites_and_refresh_only_extends(api: httpx.AsyncClient, node: Node) -> None:
    sid = (await _create(api, timeout=600))["sandboxID"]
    assert (await api.post(f"/sandboxes/{sid}/timeout", json={"timeout": 30})).status_code == 204
    lifetime = node.get(sid).lifetime
    assert lifetime is not None and lifetime.expires_at - time.time() <= 30
    assert (await api.post(f"/sandboxes/{sid}/refreshes", json={"duration": 10})).status_code == 204
    assert node.get(sid).lifetime == lifetime  # shorter than what is left: unchanged
    assert (await api.post(f"/sandboxes/{sid}/refreshes", json={"duration": 3000})).status_code == 204
    lifetime = node.get(sid).lifetime
    assert lifetime is not None and lifetime.expires_at - time.time() > 2900
    _error(await api.post(f"/sandboxes/{sid}/refreshes", json={"duration": 3601}), 400)
    _error(await api.post("/sandboxes/nosuch/timeout", json={"timeout": 30}), 404)


async def test_pause_connect_resume(api: httpx.AsyncClient, node: Node) -> None:
    created = await _create(api, timeout=60)
    sid = created["sandboxID"]
    assert (await api.post(f"/sandboxes/{sid}/pause", json={})).status_code == 204
    assert node.get(sid).record.state is VmState.PAUSED
    _error(await api.post(f"/sandboxes/{sid}/pause"), 409)  # the SDK returns False for it

    reply = await api.post(f"/v2/sandboxes/{sid}/connect", json={"timeout": 90})
    assert reply.status_code == 201  # resumed
    assert SandboxModel.from_dict(reply.json()).envd_access_token == created["envdAccessToken"]
    assert node.get(sid).record.state is VmState.RUNNING
    lifetime = node.get(sid).lifetime
    assert lifetime is not None and 80 < lifetime.expires_at - time.time() <= 90

    reply = await api.post(f"/sandboxes/{sid}/connect", json={"timeout": 10})
    assert reply.status_code == 200  # already running; a shorter timeout does not shorten
    assert node.get(sid).lifetime == lifetime
    _error(await api.post(f"/sandboxes/{sid}/connect", json={}), 400)  # v1 requires the timeout

    _error(await api.post(f"/sandboxes/{sid}/resume", json={"timeout": 20}), 409)  # running
    await api.post(f"/sandboxes/{sid}/pause")
    reply = await api.post(f"/sandboxes/{sid}/resume", json={"timeout": 20})
    assert reply.status_code == 201 and node.get(sid).record.state is VmState.RUNNING
    _error(await api.post("/v2/sandboxes/nosuch/connect", json={}), 404)


async def test_a_vm_made_through_grpc_is_a_secure_sandbox(api: httpx.AsyncClient, node: Node) -> None:
    view = await Service(node).create(CreateParams())
    reply = await api.post(f"/v2/sandboxes/{view.record.id}/connect", json={})
    assert reply.status_code == 200
    token = reply.json()["envdAccessToken"]
    assert token and (await api.get(f"/sandboxes/{view.record.id}")).json()["envdAccessToken"] == token
    assert node.get(view.record.id).lifetime is None  # connect only extends: none stays none
    assert (await api.get(f"/sandboxes/{view.record.id}")).json()["endAt"].startswith("9999")


async def test_kill_then_everything_is_404(api: httpx.AsyncClient, node: Node) -> None:
    sid = (await _create(api))["sandboxID"]
    assert (await api.delete(f"/sandboxes/{sid}")).status_code == 204
    assert node.vms == {}
    _error(await api.delete(f"/sandboxes/{sid}"), 404)  # the SDK's kill returns False
    for path in ("", "/logs", "/metrics"):
        _error(await api.get(f"/sandboxes/{sid}{path}"), 404)
    _error(await api.get("/sandboxes/..%2F..%2Fetc"), 404)


async def test_logs_and_metrics_shapes(api: httpx.AsyncClient) -> None:
    sid = (await _create(api))["sandboxID"]
    logs = SandboxLogs.from_dict((await api.get(f"/sandboxes/{sid}/logs")).json())
    assert isinstance(logs.logs, list)
    v2 = SandboxLogsV2Response.from_dict((await api.get(f"/v2/sandboxes/{sid}/logs")).json())
    assert isinstance(v2.logs, list)
    metrics = [SandboxMetric.from_dict(m) for m in (await api.get(f"/sandboxes/{sid}/metrics")).json()]
    assert len(metrics) == 1 and metrics[0].cpu_count == 1 and metrics[0].mem_total == 256 << 20
    assert 0 < metrics[0].mem_used <= metrics[0].mem_total
    many = (await api.get("/sandboxes/metrics", params={"sandbox_ids": f"{sid},nosuch"})).json()
    assert set(many["sandboxes"]) == {sid}


async def test_logs_read_the_rotated_console_and_outlive_the_vm(api: httpx.AsyncClient, node: Node) -> None:
    """The console is read as `clawpot logs` reads it: the predecessor ``.1`` first, and still there
    when the VM has gone to Error (its metadata.json is gone then; the console is kept)."""
    sid = (await _create(api))["sandboxID"]
    nvm = node.get(sid)
    path = console.console_log(nvm.record.vm_dir, nvm.record.backend)
    path.with_name(path.name + ".1").write_bytes(b"[    1.000000] older line\n")
    with path.open("ab") as f:
        f.write(b"[    2.500000] newer \x1b[31mline\n")
    lines = [ln["line"] for ln in (await api.get(f"/sandboxes/{sid}/logs")).json()["logs"]]
    assert lines[0] == "[    1.000000] older line" and "[    2.500000] newer [31mline" in lines
    assert nvm.record.pid is not None
    fake_vmm.crash(nvm.record.pid)
    deadline = time.monotonic() + 30
    while not (node.get(sid).record.state is VmState.ERROR and path.exists()):
        assert time.monotonic() < deadline, "the crashed VM did not reach Error with its console kept"
        await asyncio.sleep(0.05)
    v2 = SandboxLogsV2Response.from_dict((await api.get(f"/v2/sandboxes/{sid}/logs")).json())
    assert [e.message for e in v2.logs][:1] == ["[    1.000000] older line"]


def test_metadata_query_round_trip() -> None:
    wanted = {"a b": "c&d=e", "ü": "%"}
    quoted = urllib.parse.urlencode({urllib.parse.quote(k): urllib.parse.quote(v) for k, v in wanted.items()})
    assert listing.parse_metadata(quoted) == wanted


@pytest.mark.parametrize(
    ("body", "egress"),
    [
        ({}, Egress()),
        ({"allow_internet_access": True}, Egress()),
        ({"allow_internet_access": False}, Egress(no_internet=True)),
        ({"network": {"allowOut": ["1.1.1.1"]}}, Egress()),  # E2B: allow is only an exception to a deny
        ({"network": {"denyOut": ["0.0.0.0/0"]}}, Egress(no_internet=True)),
        (
            {"network": {"denyOut": ["0.0.0.0/0"], "allowOut": ["1.1.1.1", "example.com"]}},
            Egress(allow_out=("1.1.1.1", "example.com")),
        ),
        (
            {"allow_internet_access": False, "network": {"allowOut": ["1.1.1.1"]}},
            Egress(allow_out=("1.1.1.1",)),
        ),
        ({"network": {"denyOut": ["10.0.0.0/8"]}}, Egress(deny_out=("10.0.0.0/8",))),
        ({"network": {"allowPublicTraffic": False}}, Egress()),
    ],
)
def test_e2b_egress_maps_onto_the_vm_egress_policy(body: dict[str, Any], egress: Egress) -> None:
    assert NewSandbox.model_validate({"templateID": "base", **body}).egress() == egress
