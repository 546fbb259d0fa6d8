"""The spawn helper both VMMs use (clawpot.vmm.spawn), on real processes: a VMM here is any program,
so ``sh`` and ``sleep`` stand in for one (the real VMMs run through it in the integration tests)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clawpot.vm import procfs
from clawpot.vmm.base import ExitInfo, VmmStartError
from clawpot.vmm.spawn import OnExit, VmmChild, spawn

SH = shutil.which("sh") or "/bin/sh"


def recorder(calls: list[int]) -> OnExit:
    def on_exit(returncode: int) -> ExitInfo:
        calls.append(returncode)
        return ExitInfo(returncode, None, f"ended with {returncode}")

    return on_exit


def start(tmp_path: Path, script: str, on_exit: OnExit) -> VmmChild:
    with open(tmp_path / "out", "wb") as out:
        return spawn(
            [SH, "-c", script], stdout=out, stderr=subprocess.STDOUT, on_exit=on_exit, die_with_parent=False
        )


async def test_exit_is_seen_explained_once_and_reaped(tmp_path: Path) -> None:
    calls: list[int] = []
    child = start(tmp_path, "echo hello; echo oops >&2; exit 3", recorder(calls))
    info = await asyncio.wait_for(child.wait(), 10)
    assert info == ExitInfo(3, None, "ended with 3") and child.exit_info == info and not child.running
    assert calls == [3]
    assert (tmp_path / "out").read_text() == "hello\noops\n"
    assert procfs.start_ticks(child.pid) is None  # reaped: not even a zombie
    assert await child.wait() == info and calls == [3]


async def test_own_session_and_terminate_then_kill(tmp_path: Path) -> None:
    calls: list[int] = []
    child = start(tmp_path, "trap '' TERM; while :; do sleep 0.05; done", recorder(calls))
    assert os.getsid(child.pid) == child.pid  # its own session: a terminal's Ctrl+C is not its
    assert await child.wait_at_most(0.05) is None
    began = time.monotonic()
    info = await child.terminate(term_seconds=0.3)  # TERM is ignored: SIGKILL after the grace
    assert time.monotonic() - began >= 0.3
    assert calls == [-signal.SIGKILL] and info.reason == f"ended with {-signal.SIGKILL}"
    child.send_signal(signal.SIGKILL)  # reaped: nothing left to signal, no error


async def test_a_cancelled_waiter_does_not_cancel_the_exit(tmp_path: Path) -> None:
    calls: list[int] = []
    child = start(tmp_path, "sleep 60", recorder(calls))
    waiter = asyncio.create_task(child.wait())
    await asyncio.sleep(0.01)
    waiter.cancel()
    info = await child.terminate(term_seconds=5)
    assert info.returncode == -signal.SIGTERM and calls == [-signal.SIGTERM]


async def test_a_broken_explanation_still_ends_every_wait(tmp_path: Path) -> None:
    def broken(returncode: int) -> ExitInfo:
        raise OSError("cannot read the log")

    child = start(tmp_path, "exit 5", broken)
    info = await asyncio.wait_for(child.wait(), 10)
    assert info.returncode == 5 and info.reason == "sh exited (5)"


async def test_a_program_that_cannot_run_is_a_start_error(tmp_path: Path) -> None:
    with pytest.raises(VmmStartError, match=r"cannot run .*nope: No such file or directory"):
        spawn([str(tmp_path / "nope")], stdout=1, stderr=2, on_exit=recorder([]), die_with_parent=False)


def test_die_with_parent_takes_the_vmm_along(tmp_path: Path) -> None:
    """A launcher that dies without stopping its VMM: the kernel kills the VMM too."""
    pid_file = tmp_path / "pid"
    launcher = (
        "import asyncio, sys\n"
        "from clawpot.vmm.base import ExitInfo\n"
        "from clawpot.vmm.spawn import spawn\n"
        "async def main():\n"
        "    child = spawn(['sleep', '60'], stdout=1, stderr=2, die_with_parent=True,\n"
        "                  on_exit=lambda rc: ExitInfo(rc, None, ''))\n"
        f"    open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "asyncio.run(main())\n"  # returns without stopping it: the launcher exits, the VMM must go
    )
    subprocess.run([sys.executable, "-c", launcher], check=True, timeout=30)
    pid = int(pid_file.read_text())
    ticks = procfs.start_ticks(pid)  # None if it is already gone; else pins this very process

    def sleeping() -> bool:
        return ticks is not None and procfs.is_alive(pid, ticks) and procfs.command_name(pid) == "sleep"

    deadline = time.monotonic() + 10
    while sleeping() and time.monotonic() < deadline:
        time.sleep(0.02)
    alive = sleeping()
    if alive:  # the test failed: leave no process behind
        os.kill(pid, signal.SIGKILL)
    assert not alive
