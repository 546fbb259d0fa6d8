"""Per-VM CPU and memory (clawpot.node.usage): from /proc of a real process (a busy and a sleeping
child stand in for a VMM), and from cgroup v2 files (written here in the kernel's format: a real
cgroup needs root and the jail's placement, which supplies the locator)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from clawpot.node import usage
from clawpot.vm import procfs


@pytest.fixture
def busy() -> Iterator[subprocess.Popen[bytes]]:
    # Burns ~0.3 s of CPU and holds ~50 MB, then sleeps: a stand-in VMM with known usage.
    code = (
        "import time\nb = bytearray(50 << 20)\nt = time.process_time()\n"
        "while time.process_time() - t < 0.3: pass\nprint('ok', flush=True)\ntime.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"ok\n"
    yield proc
    proc.kill()
    proc.wait()


def test_proc_gives_cpu_seconds_and_resident_memory(busy: subprocess.Popen[bytes]) -> None:
    found = usage.from_proc(busy.pid, procfs.start_ticks(busy.pid))
    assert found is not None and found.source == "proc"
    assert 0.25 <= found.cpu_seconds < 5
    assert 50 << 20 <= found.memory_bytes < 500 << 20


def test_a_reused_pid_or_a_gone_process_gives_nothing(busy: subprocess.Popen[bytes]) -> None:
    ticks = procfs.start_ticks(busy.pid)
    assert ticks is not None
    assert usage.from_proc(busy.pid, ticks + 1) is None  # another process under the same PID
    busy.kill()
    busy.wait()
    time.sleep(0.05)
    assert usage.from_proc(busy.pid) is None


def test_the_cgroup_wins_where_the_locator_names_one(tmp_path: Path, busy: subprocess.Popen[bytes]) -> None:
    cgroup = tmp_path / "vm-abc"
    cgroup.mkdir()
    (cgroup / "cpu.stat").write_text("usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n")
    (cgroup / "memory.current").write_text("314572800\n")
    usage.set_cgroup_locator(lambda vm_id: [cgroup] if vm_id == "abc" else [])
    try:
        assert usage.read_usage("abc", busy.pid) == usage.VmUsage(2.5, 314572800, "cgroup")
        other = usage.read_usage("other", busy.pid)
        assert other is not None and other.source == "proc"
        (cgroup / "memory.current").unlink()  # the cgroup went away: /proc again
        fallback = usage.read_usage("abc", busy.pid)
        assert fallback is not None and fallback.source == "proc"
    finally:
        usage.set_cgroup_locator(None)
    assert usage.read_usage("abc", None) is None


def test_cgroup_v1_hierarchies(tmp_path: Path) -> None:
    cpu, memory = tmp_path / "cpu,cpuacct" / "vm-abc", tmp_path / "memory" / "vm-abc"
    cpu.mkdir(parents=True)
    memory.mkdir(parents=True)
    (cpu / "cpuacct.usage").write_text("1500000000\n")  # nanoseconds
    (memory / "memory.usage_in_bytes").write_text("104857600\n")
    assert usage.from_cgroup(cpu, memory) == usage.VmUsage(1.5, 104857600, "cgroup")
    assert usage.from_cgroup(cpu) is None  # memory missing: not half an answer
