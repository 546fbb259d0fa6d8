"""How a QEMU exit is explained to a user: exit code or signal, plus QEMU's own complaint."""

from __future__ import annotations

import signal
from pathlib import Path

from clawpot.vmm.qemu.process import _exit_info, _last_error_line


def test_signal_exit() -> None:
    info = _exit_info(-signal.SIGKILL, "")
    assert (info.returncode, info.signal) == (None, signal.SIGKILL)
    assert info.reason == "qemu killed by SIGKILL"


def test_clean_exit_is_a_guest_shutdown() -> None:
    info = _exit_info(0, "")
    assert info.returncode == 0 and info.signal is None
    assert "guest powered off or rebooted" in info.reason
    assert _exit_info(0, "", quit_sent=True).reason == "qemu quit on request"


def test_error_exit_carries_qemu_complaint() -> None:
    info = _exit_info(1, "could not open disk image /x: No such file or directory")
    assert info.reason == "qemu exited with code 1: could not open disk image /x: No such file or directory"


def test_first_error_line_wins_over_its_consequences(tmp_path: Path) -> None:
    log = tmp_path / "qemu.log"
    log.write_text(
        "qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69\n"
        "qemu-system-x86_64: ../../target/i386/kvm/kvm.c:3183: kvm_buf_set_msrs: Assertion failed.\n"
    )
    assert _last_error_line(log) == "error: failed to set MSR 0x10a to 0x69"


def test_last_line_without_error_word(tmp_path: Path) -> None:
    log = tmp_path / "qemu.log"
    log.write_text("\nqemu-system-x86_64: terminating on signal 15 from pid 42 (python)\n\n")
    assert _last_error_line(log) == "terminating on signal 15 from pid 42 (python)"
    assert _last_error_line(tmp_path / "missing.log") == ""
