"""/metrics of a real gRPC server on the fake VMM (a real agent process stands in for the VMM:
tests/support/fake_vmm.py), scraped over real HTTP and read with prometheus_client's own parser:
the numbers follow known activity (creates, execs, failed calls), per-VM usage is there for the VM
that runs, and the listen rules match the API's."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from clawpot.metrics import instruments
from clawpot.metrics.collector import NodeCollector
from clawpot.metrics.http import MetricsAddress, MetricsServer, check_address
from clawpot.node.node import Node
from clawpot.server.app import _known_methods
from clawpot.server.listeners import ListenError, TlsFiles
from clawpot.server.rpcmetrics import RpcMetricsInterceptor
from clawpot.server.servicer import VmServicer
from clawpot.service.service import Service
from clawpot.v1 import vm_pb2, vm_pb2_grpc

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
async def served(node: Node) -> AsyncIterator[tuple[grpc.aio.Channel, int]]:
    server = grpc.aio.server(interceptors=(RpcMetricsInterceptor(_known_methods()),))
    vm_pb2_grpc.add_VmServiceServicer_to_server(VmServicer(Service(node)), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    collector = NodeCollector.of(node, asyncio.get_running_loop())
    instruments.REGISTRY.register(collector)
    metrics = MetricsServer(check_address("127.0.0.1:0", None), instruments.REGISTRY)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel, metrics.port
    finally:
        await asyncio.to_thread(metrics.close)
        instruments.REGISTRY.unregister(collector)
        await server.stop(None)


async def _exec(api: vm_pb2_grpc.VmServiceStub, vm_id: str) -> None:
    async def requests() -> AsyncIterator[vm_pb2.ExecRequest]:
        yield vm_pb2.ExecRequest(start=vm_pb2.ExecStart(vm_id=vm_id, argv=["true"]))

    replies = [r async for r in api.Exec(requests())]
    assert replies[-1].exit.exit_code == 0


async def test_a_scrape_counts_what_happened(served: tuple[grpc.aio.Channel, int]) -> None:
    channel, port = served
    api = vm_pb2_grpc.VmServiceStub(channel)
    scrape = lambda: asyncio.to_thread(_scrape, port)  # noqa: E731 - the scrape runs in its own thread
    before = await scrape()
    vm = await api.CreateVm(vm_pb2.CreateVmRequest())
    for _ in range(3):
        await _exec(api, vm.id)
    with pytest.raises(grpc.aio.AioRpcError):
        await api.GetVm(vm_pb2.GetVmRequest(id="nosuchvm"))
    after = await scrape()

    def delta(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    assert delta("clawpot_exec_start_seconds_count") == 3
    assert delta("clawpot_rpcs_total", method="VmService/Exec", code="OK") == 3
    assert delta("clawpot_rpcs_total", method="VmService/CreateVm", code="OK") == 1
    assert delta("clawpot_rpcs_total", method="VmService/GetVm", code="NOT_FOUND") == 1
    assert delta("clawpot_vm_create_seconds_count", origin="cold") == 1
    assert delta("clawpot_rpc_duration_seconds_count", method="VmService/Exec") == 3
    assert _value(after, "clawpot_vms", state="running", backend="qemu") == 1
    assert _value(after, "clawpot_vms", state="error", backend="firecracker") == 0  # zeros are there
    # The VM's own usage: its "VMM" is a real process (the fake's agent), read from /proc.
    assert _value(after, "clawpot_vm_cpu_seconds_total", id=vm.id, backend="qemu") > 0
    assert _value(after, "clawpot_vm_memory_bytes", id=vm.id, backend="qemu") > 1 << 20
    assert _value(after, "clawpot_events_total") - _value(before, "clawpot_events_total") == 2
    assert _value(after, "process_resident_memory_bytes") > 0

    await api.DeleteVm(vm_pb2.DeleteVmRequest(id=vm.id))
    gone = await scrape()
    assert _value(gone, "clawpot_vms", state="running", backend="qemu") == 0
    assert not [key for key in gone if dict(key[1]).get("id") == vm.id]  # its series are gone


async def test_made_up_methods_do_not_grow_the_label_set(served: tuple[grpc.aio.Channel, int]) -> None:
    channel, port = served
    for n in range(3):
        call = channel.unary_unary(f"/clawpot.v1.VmService/Nope{n}")
        with pytest.raises(grpc.aio.AioRpcError):
            await call(b"")
    samples = await asyncio.to_thread(_scrape, port)
    assert not [key for key in samples if any(v.startswith("VmService/Nope") for _, v in key[1])]


def test_listen_rules_match_the_api(tmp_path: Path) -> None:
    assert check_address("127.0.0.1:9464", None).host == "127.0.0.1"
    assert check_address("[::1]:9464", None).host == "::1"
    with pytest.raises(ListenError, match="needs TLS"):
        check_address("0.0.0.0:9464", None)
    with pytest.raises(ListenError, match="needs TLS"):
        check_address("example.org:9464", None)
    tls = TlsFiles(tmp_path / "c.pem", tmp_path / "k.pem")
    assert check_address("10.0.0.5:9464", tls).tls == tls
    assert check_address("127.0.0.1:9464", tls).tls is None  # loopback stays plain http
    for bad in ("unix:/tmp/m.sock", "9464", "127.0.0.1:x", "127.0.0.1:70000", ":9464"):
        with pytest.raises(ListenError):
            check_address(bad, None)


def test_off_loopback_it_is_served_over_tls_only(tmp_path: Path) -> None:
    cert, key = tmp_path / "m.crt", tmp_path / "m.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=metrics",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    # What check_address gives for a non-loopback HOST with TLS, bound here on loopback to test it.
    server = MetricsServer(MetricsAddress("127.0.0.1", 0, TlsFiles(cert, key)), instruments.REGISTRY)
    try:
        context = ssl.create_default_context(cafile=str(cert))
        url = f"https://127.0.0.1:{server.port}/metrics"
        with urllib.request.urlopen(url, context=context, timeout=10) as reply:
            assert b"# TYPE clawpot_rpcs_total counter" in reply.read()
        with pytest.raises(OSError):  # plain HTTP gets no answer it can read
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=10).read()
    finally:
        server.close()
