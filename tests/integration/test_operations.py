"""Operating a server: Prometheus metrics, `clawpot logs -f` and `clawpot events`, on one real QEMU/TCG VM.

One server runs in a network namespace this module creates (server_harness) with ``--metrics-listen``
on the namespace's loopback and ``--log-format json``; one VM is shared by the tests, which run in
order: metrics follow known activity (scraped over real HTTP inside the namespace and read with
prometheus_client's own parser), then ``logs -f`` follows the VM while it prints, keeps following
while its kernel is crashed from inside (``echo c > /proc/sysrq-trigger``: panic=1 and QEMU's
-no-reboot end the VMM, which the node reports as Error), prints the panic and ends by itself; the
crashed VM's console is still there for ``logs``; ``events`` saw created, running, error (with the
reason) and deleted, in order, both live and replayed from a sequence number.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families
from server_harness import InstalledAssets, ServerProcess, server_in_namespace, wait_until

from clawpot.v1 import vm_pb2

METRICS_PORT = 9464  # inside the test's own namespace: nothing else listens there
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class Reader:
    """Collects a child process's stdout lines in a thread (the test waits on them with a deadline)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.decode(errors="replace"))

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def finish(self, timeout: float = 30) -> int:
        code = self.proc.wait(timeout)
        self._thread.join(timeout)
        return code


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, installed_assets: InstalledAssets
) -> Iterator[ServerProcess]:
    args = ("--metrics-listen", f"127.0.0.1:{METRICS_PORT}", "--log-format", "json")
    with server_in_namespace(tmp_path_factory.mktemp("ops"), installed_assets, *args) as srv:
        yield srv


@pytest.fixture(scope="module")
def watcher(server: ServerProcess) -> Iterator[Reader]:
    """`clawpot events -o json`, live, from before the VM is created."""
    reader = Reader(server.cli_popen("events", "-o", "json", stdout=subprocess.PIPE))
    time.sleep(1)  # let it subscribe before anything happens (the replay test covers the rest)
    yield reader
    if reader.proc.poll() is None:
        reader.proc.terminate()
        reader.finish()


@pytest.fixture(scope="module")
def vm(server: ServerProcess, watcher: Reader) -> str:
    return server.create()


def scrape(server: ServerProcess) -> Samples:
    fetch = f"import urllib.request as u; print(u.urlopen('http://127.0.0.1:{METRICS_PORT}/metrics').read().decode())"
    text = server.ns.run([sys.executable, "-c", fetch]).stdout
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_metrics_follow_known_activity(server: ServerProcess, vm: str) -> None:
    before = scrape(server)
    with server.stub() as api:  # three Exec calls over real gRPC (no CLI start-up on a loaded host)
        for n in range(3):
            request = vm_pb2.ExecRequest(start=vm_pb2.ExecStart(vm_id=vm, argv=["echo", str(n)]))
            replies = list(api.Exec(iter([request]), timeout=120))
            assert replies[-1].exit.exit_code == 0 and replies[0].stdout == f"{n}\n".encode()
    after = scrape(server)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("clawpot_exec_start_seconds_count") == 3
    assert delta("clawpot_rpcs_total", method="VmService/Exec", code="OK") == 3
    assert value(after, "clawpot_rpcs_total", method="VmService/CreateVm", code="OK") == 1
    assert value(after, "clawpot_vm_create_seconds_count", origin="cold") == 1
    assert value(after, "clawpot_vms", state="running", backend="qemu") == 1
    # The VM's own QEMU, from /proc: it booted a kernel under TCG, so it has used CPU; its guest RAM
    # is (partly) resident.
    assert value(after, "clawpot_vm_cpu_seconds_total", id=vm, backend="qemu") > 0.5
    assert value(after, "clawpot_vm_memory_bytes", id=vm, backend="qemu") > 32 << 20
    assert value(after, "clawpot_address_pool_used") == 1
    assert value(after, "clawpot_address_pool_addresses") == 253
    assert value(after, "clawpot_event_watchers") == 1


def test_logs_follow_a_vm_that_prints_then_crashes(server: ServerProcess, vm: str) -> None:
    follow = Reader(server.cli_popen("logs", "-f", "--tail", "0", vm, stdout=subprocess.PIPE))
    printer = (
        "for i in 1 2 3; do echo tick-$i > /dev/ttyS0; sleep 0.3; done; "
        "printf '\\033]0;pwned\\007\\n' > /dev/ttyS0"
    )
    assert server.exec(vm, "sh", "-c", printer).returncode == 0
    wait_until(lambda: "tick-3" in follow.text, 30, "logs -f to show what the VM printed")
    assert follow.proc.poll() is None, "logs -f must keep following a running VM"
    # Crash the guest's kernel from inside: panic=1 reboots, -no-reboot ends QEMU: the node sees Error.
    crash = server.exec(vm, "sh", "-c", "echo c > /proc/sysrq-trigger", timeout=120)
    assert crash.returncode != 0
    wait_until(lambda: server.vms()[vm].state == vm_pb2.VM_STATE_ERROR, 60, "the VM to be Error")
    assert follow.finish(30) == 0, "logs -f ends once the VM can print no more"
    text = follow.text
    assert text.index("tick-1") < text.index("tick-2") < text.index("tick-3") < text.index("sysrq")
    assert "Kernel panic" in text
    assert "\x1b" not in text and "\\e]0;pwned\\x07" in text  # the guest's escape shown, not obeyed
    assert "\r" not in text
    # Kept after the crash, until delete: the console of the dead VM, read again.
    again = server.cli_ok("logs", "--tail", "200", vm)
    assert "tick-3" in again and "Kernel panic" in again
    raw = server.cli("logs", "--raw", "--tail", "200", vm)
    assert "\x1b]0;pwned\x07" in raw.stdout  # --raw: the bytes as the guest wrote them


def test_events_saw_the_life_of_the_vm_in_order(server: ServerProcess, vm: str, watcher: Reader) -> None:
    server.cli_ok("delete", vm)
    replay = [
        json.loads(line)
        for line in server.cli_ok("events", "--since", "0", "--no-follow", "-o", "json").splitlines()
    ]
    mine = [e for e in replay if e["vm_id"] == vm]
    assert [e["kind"] for e in mine] == ["created", "running", "error", "deleted"]
    assert [e["state"] for e in mine] == ["starting", "running", "error", "stopped"]
    assert "qemu exited" in mine[2]["reason"]
    sequences = [e["sequence"] for e in replay]
    assert sequences == sorted(sequences) and len(set(sequences)) == len(sequences)
    # Resuming from the created event gives the rest, exactly.
    rest = server.cli_ok("events", "--since", str(mine[0]["sequence"]), "--no-follow", "-o", "json")
    assert [json.loads(line)["kind"] for line in rest.splitlines()] == ["running", "error", "deleted"]
    # The live watcher saw the same, as it happened.
    wait_until(lambda: '"deleted"' in watcher.text, 30, "the live watcher to see the delete")
    live = [json.loads(line) for line in watcher.lines if json.loads(line)["vm_id"] == vm]
    assert [e["sequence"] for e in live] == [e["sequence"] for e in mine]
    # A sequence from before anything this server kept: a clear OUT_OF_RANGE, exit 1.
    gone = server.cli("events", "--since", "1")
    assert gone.returncode == 1 and "OUT_OF_RANGE" in gone.stderr


def test_one_json_log_line_per_call_and_metrics_after_delete(server: ServerProcess) -> None:
    calls = []
    for line in server.log_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("logger") == "clawpot.server.rpc":
                calls.append(entry)
    creates = [c for c in calls if c["method"] == "VmService/CreateVm"]
    assert len(creates) == 1 and creates[0]["code"] == "OK" and creates[0]["vm_id"]
    assert creates[0]["duration_ms"] > 0 and creates[0]["level"] == "info"
    assert any(c["method"] == "VmService/WatchVms" for c in calls)
    after = scrape(server)
    assert value(after, "clawpot_vms", state="running", backend="qemu") == 0
    assert value(after, "clawpot_address_pool_used") == 0
