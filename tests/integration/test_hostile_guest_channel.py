"""A guest that takes over its agent's port and attacks the host (issue 10, defects 1 and 4a).

Real everything: a real ``clawpot-server`` in a namespace with two real QEMU/TCG VMs. Inside VM A a
hostile program (tests/integration/hostile/take_over_port.py, copied in with the real ``cp`` and
started through exec in the background) SIGSTOPs the agent, copies its virtio-serial port fd with
``pidfd_getfd`` and floods, lies or stalls. Meanwhile the test keeps calling exec on A (each call makes
the server connect to A's channel again, right into the attack) and measures VM B, the bystander.

What must hold: the server's RSS rises at most 64 MiB, B's exec latency stays within 2x its idle figure
(medians; idle measured first in the same test), the server log grows at most 1 MiB under an ERROR
flood, the server keeps serving, A's calls fail UNAVAILABLE promptly instead of hanging, and A works
again once the attacker lets go. The numbers are printed as JSON lines (``pytest -s`` shows them).
"""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from server_harness import InstalledAssets, ServerProcess, server_in_namespace

from clawpot.v1 import vm_pb2

ATTACKER = Path(__file__).parent / "hostile" / "take_over_port.py"
GUEST_ATTACKER = "/tmp/take_over_port.py"
AGENT_TIMEOUT = 3.0
# The must-show bounds of issue 10.
MAX_RSS_RISE_KIB = 64 * 1024
MAX_LOG_GROWTH = 1024 * 1024
LATENCY_FACTOR = 2.0
# A call to the attacked VM must fail within this (the server's agent timeout, twice: reconnect + call).
PROMPT = 2 * AGENT_TIMEOUT + 4.0
# Client deadline of the calls that look for the attack's start (an exec under TCG takes ~50 ms).
DETECT = 2.0


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, installed_assets: InstalledAssets
) -> Iterator[ServerProcess]:
    with server_in_namespace(
        tmp_path_factory.mktemp("hostile"),
        installed_assets,
        "--no-network",
        "--agent-timeout",
        str(AGENT_TIMEOUT),
    ) as srv:
        yield srv


@dataclass(frozen=True)
class Vms:
    attacked: str
    bystander: str


@pytest.fixture(scope="module")
def vms(server: ServerProcess) -> Vms:
    attacked = server.create()
    bystander = server.create()
    server.cli_ok("cp", str(ATTACKER), f"{attacked}:{GUEST_ATTACKER}")
    return Vms(attacked, bystander)


# --- calls ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    seconds: float
    code: grpc.StatusCode | None  # None: the command ran
    exit_code: int | None = None
    stdout: bytes = b""
    message: str = ""


def exec_call(server: ServerProcess, vm_id: str, *argv: str, timeout: float = 60) -> Call:
    request = vm_pb2.ExecRequest(start=vm_pb2.ExecStart(vm_id=vm_id, argv=list(argv)))
    started = time.monotonic()
    with server.stub() as api:
        try:
            replies = list(api.Exec(iter([request]), timeout=timeout))
        except grpc.RpcError as exc:
            assert isinstance(exc, grpc.Call)
            return Call(time.monotonic() - started, exc.code(), message=exc.details() or "")
    elapsed = time.monotonic() - started
    out = b"".join(r.stdout for r in replies if r.HasField("stdout"))
    exits = [r.exit.exit_code for r in replies if r.HasField("exit")]
    return Call(elapsed, None, exits[-1] if exits else None, out)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def median_exec_latency(server: ServerProcess, vm_id: str, n: int = 7) -> float:
    samples = []
    for _ in range(n):
        call = exec_call(server, vm_id, "true")
        assert call.code is None and call.exit_code == 0, call
        samples.append(call.seconds)
    return statistics.median(samples)


def launch(server: ServerProcess, vm_id: str, mode: str, seconds: float) -> None:
    """Start the attacker in the background (setsid + nohup: it outlives the exec that starts it)."""
    report = f"/tmp/report-{mode}.json"
    command = (
        f"rm -f {report}; setsid nohup python3 {GUEST_ATTACKER} {mode} {seconds:g} {report} "
        f">/tmp/out-{mode}.txt 2>&1 </dev/null &"
    )
    call = exec_call(server, vm_id, "sh", "-c", command)
    assert call.code is None and call.exit_code == 0, call


def wait_recovered(server: ServerProcess, vm_id: str, timeout: float = 90) -> float:
    """Once the attacker has let go, A's agent answers again; returns how long that took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if exec_call(server, vm_id, "true", timeout=30).code is None:
            return time.monotonic() - started
        time.sleep(0.5)
    raise AssertionError(f"VM {vm_id} did not recover within {timeout:g} s; log:\n{server.log_tail()}")


def attacker_report(server: ServerProcess, vm_id: str, mode: str, timeout: float = 30) -> dict[str, object]:
    """The attacker's report. It writes it after letting go of the agent, so on a loaded host the agent
    can answer again a moment before the report exists: poll for it."""
    deadline = time.monotonic() + timeout
    while True:
        call = exec_call(server, vm_id, "sh", "-c", f"cat /tmp/report-{mode}.json || cat /tmp/out-{mode}.txt")
        assert call.code is None, call
        try:
            report: dict[str, object] = json.loads(call.stdout)
            break
        except ValueError:
            if time.monotonic() > deadline:
                raise AssertionError(f"the attacker left no report: {call.stdout!r}") from None
            time.sleep(0.5)
    assert not report["error"], f"the attacker failed: {report}"
    return report


@dataclass
class UnderAttack:
    """While the attacker runs: keep calling the attacked VM (so the server keeps reconnecting into the
    attack), and sample the server's RSS.

    Calls count from the first one that fails: the attack is visible from then on. One exec may be in
    flight when the attacker stops the agent; it waits for the process's end like any exec without a
    deadline would, so calls before the attack shows get a short client deadline and are not checked.
    """

    server: ServerProcess
    attacked: str
    first_failure: Call | None = None
    attacked_calls: list[Call] = field(default_factory=list)
    rss_kib: list[int] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> UnderAttack:
        self._threads = [
            threading.Thread(target=self._hammer, daemon=True),
            threading.Thread(target=self._sample, daemon=True),
        ]
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)

    def _hammer(self) -> None:
        while not self._stop.is_set():
            if self.first_failure is None:
                call = exec_call(self.server, self.attacked, "true", timeout=DETECT)
                if call.code is not None:
                    self.first_failure = call
            else:
                self.attacked_calls.append(exec_call(self.server, self.attacked, "true", timeout=60))

    def _sample(self) -> None:
        while not self._stop.wait(0.1):
            self.rss_kib.append(self.server.rss_kib())


def report_numbers(**numbers: object) -> None:
    print(json.dumps({"hostile_guest_channel": numbers}))


def call_summary(attack: UnderAttack) -> dict[str, object]:
    """How the calls to the attacked VM went: status counts and their slowest time."""
    codes: dict[str, int] = {}
    for call in attack.attacked_calls:
        name = call.code.name if call.code is not None else "OK"
        codes[name] = codes.get(name, 0) + 1
    first = attack.first_failure
    return {
        "first_failure": None if first is None else f"{first.code} after {first.seconds:.2f} s",
        "after_it": codes,
        "slowest_s": round(max((c.seconds for c in attack.attacked_calls), default=0), 2),
    }


def check_attacked_calls(attack: UnderAttack) -> None:
    """Once the attack showed, every call to the attacked VM came back promptly, and the failed ones failed
    UNAVAILABLE (checked last, so a wrong status does not hide the other numbers)."""
    first = attack.first_failure
    assert first is not None, "no call to the attacked VM failed: the attack did not happen"
    # The first failure may be an exec the attack cut off mid-stream (UNAVAILABLE), or one that was in
    # flight when the agent stopped (our own short client deadline): never UNKNOWN or INTERNAL.
    assert first.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED), first
    calls = attack.attacked_calls
    failed = [c for c in calls if c.code is not None]
    assert failed, f"no call to the attacked VM failed after the first ({attack.first_failure})"
    slowest = max(c.seconds for c in calls)
    assert slowest <= PROMPT, f"a call to the attacked VM took {slowest:.1f} s (bound {PROMPT:g} s)"
    assert not [c for c in failed if "\x1b" in c.message]
    wrong = [c for c in failed if c.code != grpc.StatusCode.UNAVAILABLE]
    assert not wrong, f"{len(wrong)} of {len(failed)} failed calls were not UNAVAILABLE, e.g. {wrong[0]}"


# --- the attacks ----------------------------------------------------------------------------------------


def test_ping_flood_without_reading_30s(server: ServerProcess, vms: Vms) -> None:
    """Defect 1: 64 KiB PINGs, PONGs never read, for 30 s."""
    # Idle before and after the attack: the machine is shared (other tests, other VMs), so the larger of
    # the two is the idle figure; both are printed.
    idle_before = median_exec_latency(server, vms.bystander, 15)
    rss_before = server.rss_kib()
    launch(server, vms.attacked, "ping", 30)
    flooded = []
    qemu = server.vmm_pids()[vms.attacked]
    with UnderAttack(server, vms.attacked) as attack:
        time.sleep(3)  # the attacker's python3 starting under TCG
        cpu_before = cpu_seconds(server.pid), cpu_seconds(qemu)
        started = time.monotonic()
        while time.monotonic() - started < 27:
            call = exec_call(server, vms.bystander, "true")
            assert call.code is None and call.exit_code == 0, call
            flooded.append(call.seconds)
            assert server.vms().keys() >= {vms.attacked, vms.bystander}  # list keeps working
        window = time.monotonic() - started
        server_cpu = (cpu_seconds(server.pid) - cpu_before[0]) / window
        qemu_cpu = (cpu_seconds(qemu) - cpu_before[1]) / window
    recovered = wait_recovered(server, vms.attacked)
    report = attacker_report(server, vms.attacked, "ping")
    idle_after = median_exec_latency(server, vms.bystander, 15)
    idle = max(idle_before, idle_after)
    rise = max(attack.rss_kib) - rss_before
    under = statistics.median(flooded)
    report_numbers(
        mode="ping",
        attacker=report,
        server_rss_before_kib=rss_before,
        server_rss_peak_kib=max(attack.rss_kib),
        server_rss_rise_kib=rise,
        bystander_exec_median_idle_before_s=round(idle_before, 4),
        bystander_exec_median_idle_after_s=round(idle_after, 4),
        bystander_exec_median_flood_s=round(under, 4),
        bystander_execs_under_flood=len(flooded),
        server_cpu_share=round(server_cpu, 3),  # of one core, while flooded (the bystander's calls included)
        attacked_qemu_cpu_share=round(qemu_cpu, 3),
        attacked_calls=call_summary(attack),
        recovered_after_s=round(recovered, 2),
    )
    assert int(str(report["bytes_sent"])) > 2 * MAX_RSS_RISE_KIB * 1024, "the flood was too small to prove"
    assert "guest violation" in server.log_path.read_text(errors="replace")
    # The server marks the attacked VM degraded (sticky), and only that one.
    listed = server.vms()
    assert listed[vms.attacked].health == vm_pb2.AGENT_HEALTH_DEGRADED, listed[vms.attacked]
    assert "flood" in listed[vms.attacked].health_detail
    assert listed[vms.bystander].health != vm_pb2.AGENT_HEALTH_DEGRADED
    assert rise <= MAX_RSS_RISE_KIB, f"server RSS rose {rise} KiB"
    assert under <= LATENCY_FACTOR * idle, (
        f"bystander exec median {under:.3f} s under flood, {idle:.3f} s idle"
    )
    check_attacked_calls(attack)


def test_error_flood_log_stays_small(server: ServerProcess, vms: Vms) -> None:
    """Defect 4a: ERROR frames logged in full grew the log 760 MB in 5 s."""
    log_before = server.log_path.stat().st_size
    launch(server, vms.attacked, "error", 12)
    with UnderAttack(server, vms.attacked) as attack:
        time.sleep(14)
        assert exec_call(server, vms.bystander, "true").code is None
    wait_recovered(server, vms.attacked)
    report = attacker_report(server, vms.attacked, "error")
    with open(server.log_path, "rb") as log:
        log.seek(log_before)
        grown = log.read()
    report_numbers(
        mode="error", attacker=report, server_log_growth_bytes=len(grown), attacked_calls=call_summary(attack)
    )
    assert int(str(report["bytes_sent"])) > 8 * MAX_LOG_GROWTH, "the flood was too small to prove"
    assert len(grown) <= MAX_LOG_GROWTH
    assert b"\x1b" not in grown
    assert not any(line.startswith(b"FORGED") for line in grown.splitlines())  # no forged log lines
    assert b"\\x1b]0;pwned\\x07" in grown  # the guest's text is there, escaped
    check_attacked_calls(attack)


@pytest.mark.parametrize("mode", ["unknown", "lengths", "json", "stall"])
def test_lies_and_stalls(server: ServerProcess, vms: Vms, mode: str) -> None:
    rss_before = server.rss_kib()
    seconds = 10 if mode == "stall" else 8  # a stall shows only after a call's timeout
    launch(server, vms.attacked, mode, seconds)
    with UnderAttack(server, vms.attacked) as attack:
        time.sleep(seconds + 2)
        assert exec_call(server, vms.bystander, "true").code is None
        assert set(server.vms()) >= {vms.attacked, vms.bystander}
    recovered = wait_recovered(server, vms.attacked)
    report = attacker_report(server, vms.attacked, mode)
    rise = max(attack.rss_kib) - rss_before
    report_numbers(
        mode=mode,
        attacker=report,
        server_rss_rise_kib=rise,
        attacked_calls=call_summary(attack),
        recovered_after_s=round(recovered, 2),
    )
    assert rise <= MAX_RSS_RISE_KIB
    check_attacked_calls(attack)
