"""The E2B front door's listener rules, API key and routing (real Service over the fake-VMM node)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from starlette.types import ASGIApp

from clawpot.cli.server import main
from clawpot.e2b import listener
from clawpot.e2b.app import create_app
from clawpot.e2b.context import E2bContext
from clawpot.node.node import Node
from clawpot.server.listeners import ListenError, TlsFiles
from clawpot.service.service import Service

TOKEN = "k" * 43


@pytest.fixture
async def client(node: Node) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(E2bContext(service=Service(node), token=TOKEN))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://e2b") as c:
        yield c


def test_plan_loopback_clear_text_and_unix() -> None:
    assert listener.plan("127.0.0.1:3000", None).tls is None
    assert listener.plan("[::1]:3000", None).unix is None
    assert listener.plan("unix:/run/e2b.sock", None).unix == Path("/run/e2b.sock")


def test_plan_refuses_clear_text_off_loopback() -> None:
    with pytest.raises(ListenError, match="needs TLS"):
        listener.plan("0.0.0.0:3000", None)
    with pytest.raises(ListenError, match="expected HOST:PORT"):
        listener.plan("nonsense", None)


def test_plan_checks_tls_files(tmp_path: Path) -> None:
    (tmp_path / "c.pem").write_text("not pem")
    with pytest.raises(ListenError, match="TLS files unusable"):
        listener.plan("0.0.0.0:3000", TlsFiles(tmp_path / "c.pem", tmp_path / "c.pem"))


def test_bind_port_zero_reports_the_port() -> None:
    sock = listener.bind(listener.plan("127.0.0.1:0", None))
    try:
        host, port = listener.bound_address(sock).rsplit(":", 1)
        assert host == "127.0.0.1" and int(port) > 0
    finally:
        sock.close()


def test_bind_unix_is_private(tmp_path: Path) -> None:
    sock = listener.bind(listener.plan(f"unix:{tmp_path}/e2b.sock", None))
    try:
        assert (tmp_path / "e2b.sock").stat().st_mode & 0o777 == 0o600
    finally:
        sock.close()


@pytest.mark.parametrize(
    ("headers", "needle"), [({}, "missing API key"), ({"X-API-Key": "wrong"}, "wrong API key")]
)
async def test_rest_needs_the_api_key(
    client: httpx.AsyncClient, headers: dict[str, str], needle: str
) -> None:
    reply = await client.get("/sandboxes", headers=headers)
    assert reply.status_code == 401
    body = reply.json()
    assert body["code"] == 401 and needle in body["message"]
    assert "'wrong'" not in body["message"]  # never echoes what was presented


async def test_health_is_open(client: httpx.AsyncClient) -> None:
    assert (await client.get("/health")).status_code == 200


async def test_unknown_route_has_e2b_shape(client: httpx.AsyncClient) -> None:
    reply = await client.get("/no/such/route", headers={"X-API-Key": TOKEN})
    assert reply.status_code == 404 and reply.json()["code"] == 404


async def test_sandbox_header_routes_to_envd(client: httpx.AsyncClient) -> None:
    # No API key: envd requests are authenticated by the sandbox's access token, not the API key.
    reply = await client.get("/health", headers={"E2b-Sandbox-Id": "nosuchvm", "E2b-Sandbox-Port": "49983"})
    assert reply.status_code == 502
    assert "not found" in reply.json()["message"]


def test_server_refuses_clear_text_e2b_off_loopback(tmp_path: Path) -> None:
    data = tmp_path / "data"
    argv = ["--listen", f"unix:{tmp_path}/s.sock", "--data-dir", str(data), "--e2b-listen", "0.0.0.0:3000"]
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 1
    assert "--e2b-listen 0.0.0.0:3000: not a loopback address, so it needs TLS" in result.output
    assert not data.exists()  # refused before anything was made


@contextlib.asynccontextmanager
async def _listening(app: ASGIApp, address: str, tls: TlsFiles | None) -> AsyncIterator[int]:
    sock = listener.bind(listener.plan(address, tls))
    port = int(sock.getsockname()[1])
    stop = asyncio.Event()
    task = asyncio.create_task(listener.serve(app, sock, tls, stop))
    try:
        for _ in range(100):  # hypercorn accepts once its serve task has run
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            await asyncio.sleep(0.02)
        yield port
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


async def test_the_listener_speaks_http1_and_h2c_in_clear(node: Node) -> None:
    app = create_app(E2bContext(service=Service(node), token=TOKEN))
    async with _listening(app, "127.0.0.1:0", None) as port:
        url = f"http://127.0.0.1:{port}/sandboxes"
        async with httpx.AsyncClient() as h1:
            reply = await h1.get(url, headers={"X-API-Key": TOKEN})
            assert (reply.http_version, reply.status_code, reply.json()) == ("HTTP/1.1", 200, [])
        async with httpx.AsyncClient(http1=False, http2=True) as h2:  # prior knowledge
            reply = await h2.get(url)
            assert (reply.http_version, reply.status_code) == ("HTTP/2", 401)


@pytest.fixture
def self_signed(tmp_path: Path) -> TlsFiles:
    cert, key = tmp_path / "c.crt", tmp_path / "c.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return TlsFiles(cert, key)


async def test_the_listener_speaks_h2_over_tls(node: Node, self_signed: TlsFiles) -> None:
    app = create_app(E2bContext(service=Service(node), token=TOKEN))
    async with (
        _listening(app, "127.0.0.1:0", self_signed) as port,
        httpx.AsyncClient(http2=True, verify=ssl.create_default_context(cafile=self_signed.cert)) as client,
    ):
        reply = await client.get(f"https://127.0.0.1:{port}/sandboxes", headers={"X-API-Key": TOKEN})
        assert (reply.http_version, reply.status_code) == ("HTTP/2", 200)
