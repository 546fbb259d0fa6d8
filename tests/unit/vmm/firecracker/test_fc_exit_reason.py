"""How a firecracker exit is explained: exit code or signal, plus the last informative ERROR log line.

The log excerpts are verbatim from Firecracker v1.12.1 on this project's build hosts.
"""

from __future__ import annotations

import signal
from pathlib import Path

from clawpot.vmm.firecracker.process import explain_exit, last_error_line

CRASH_LOG = """\
2026-11-22T17:41:04.446104063 [vm1:main:INFO] Running Firecracker v1.12.1
2026-11-22T17:41:04.460091321 [vm1:fc_vcpu 0:WARN] Received a VcpuEvent::Resume message
2026-11-22T17:41:14.656700909 [vm1:fc_vcpu 0:ERROR] Received KVM_EXIT_INTERNAL_ERROR signal
2026-11-22T17:41:14.656779076 [vm1:main:INFO] Vmm is stopping.
2026-11-22T17:41:14.675332189 [vm1:main:ERROR] RunWithoutApiError error: MicroVMStopped without an error
2026-11-22T17:41:14.675383836 [vm1:main:ERROR] Firecracker exiting with error. exit_code=1
"""


def write(tmp_path: Path, log: str, stderr: str = "") -> tuple[Path, Path]:
    (tmp_path / "fc.log").write_text(log)
    (tmp_path / "fc.stderr").write_text(stderr)
    return tmp_path / "fc.log", tmp_path / "fc.stderr"


def test_the_informative_error_wins_over_the_generic_exit_lines(tmp_path: Path) -> None:
    info = explain_exit(1, *write(tmp_path, CRASH_LOG))
    assert (info.returncode, info.signal) == (1, None)
    assert (
        info.reason
        == "firecracker exited with code 1: [vm1:fc_vcpu 0] Received KVM_EXIT_INTERNAL_ERROR signal"
    )


def test_the_api_mode_wrapper_line_is_generic_too(tmp_path: Path) -> None:
    log = (
        "2026-11-22T17:59:01.1 [vm1:fc_vcpu 0:ERROR] Received KVM_EXIT_INTERNAL_ERROR signal\n"
        "2026-11-22T17:59:01.2 [vm1:main:ERROR] RunWithApiError error: MicroVM stopped with an error: X\n"
        "2026-11-22T17:59:01.3 [vm1:main:ERROR] Firecracker exiting with error. exit_code=1\n"
    )
    assert (
        last_error_line(write(tmp_path, log)[0]) == "[vm1:fc_vcpu 0] Received KVM_EXIT_INTERNAL_ERROR signal"
    )


def test_a_refused_config_file_names_firecrackers_reason(tmp_path: Path) -> None:
    # --config-file with the API socket on, the kernel's entry point below 1 MiB (verbatim).
    log = (
        "2026-11-26T13:41:31.566844845 [x:main:INFO] Running Firecracker v1.12.1\n"
        '2026-11-26T13:41:31.567248603 [x:main:INFO] Listening on API socket ("/tmp/fcx/run/api.sock").\n'
        "2026-11-26T13:41:31.567803225 [x:fc_api:INFO] API server started.\n"
        "2026-11-26T13:41:31.577797903 [x:main:INFO] Vmm is stopping.\n"
        "2026-11-26T13:41:31.598066163 [x:main:ERROR] RunWithApiError error: Failed to build MicroVM from "
        "Json: Could not Start MicroVM from one single json: System configuration error: Cannot load kernel "
        "due to invalid memory configuration or invalid kernel image: Kernel Loader: failed to load ELF "
        "kernel image: Kernel Loader: Invalid entry address\n"
        "2026-11-26T13:41:31.598137669 [x:main:ERROR] Firecracker exiting with error. exit_code=1\n"
    )
    line = last_error_line(write(tmp_path, log)[0])
    assert line is not None
    assert line.startswith("[x:main] RunWithApiError error: Failed to build MicroVM from Json: ")
    assert line.endswith("Kernel Loader: Invalid entry address")


def test_generic_error_line_is_used_when_nothing_better_exists(tmp_path: Path) -> None:
    log = "2026-11-22T17:41:14.675383836 [vm1:main:ERROR] Firecracker exiting with error. exit_code=1\n"
    assert (
        last_error_line(write(tmp_path, log)[0]) == "[vm1:main] Firecracker exiting with error. exit_code=1"
    )


def test_stderr_explains_when_the_log_has_no_error(tmp_path: Path) -> None:
    paths = write(tmp_path, "", "Error: RunWithoutApiError(Shutdown(GenericError))\n\n")
    assert (
        explain_exit(1, *paths).reason
        == "firecracker exited with code 1: Error: RunWithoutApiError(Shutdown(GenericError))"
    )


def test_a_panic_before_the_logger_is_found_in_the_serial_output(tmp_path: Path) -> None:
    # Firecracker prints early panics to stdout, which is the VM's serial file.
    serial = tmp_path / "serial.log"
    serial.write_text(
        "2026-11-22T17:48:17.309215488 [vm:main] Firecracker panicked at "
        "src/firecracker/src/main.rs:291:48:\n"
        "Invalid instance ID: InvalidChar(' ', 3)\n"
    )
    info = explain_exit(-signal.SIGABRT, *write(tmp_path, ""), serial)
    assert info.reason == (
        "firecracker killed by SIGABRT: Firecracker panicked at src/firecracker/src/main.rs:291:48: "
        "Invalid instance ID: InvalidChar(' ', 3)"
    )


def test_signal_exit(tmp_path: Path) -> None:
    info = explain_exit(-signal.SIGKILL, *write(tmp_path, ""))
    assert (info.returncode, info.signal) == (None, signal.SIGKILL)
    assert info.reason == "firecracker killed by SIGKILL"


def test_clean_exit_without_errors_names_the_guest(tmp_path: Path) -> None:
    assert explain_exit(0, *write(tmp_path, "")).reason == (
        "firecracker exited with code 0: the guest rebooted, powered off or panicked"
    )


def test_missing_files_are_not_an_error(tmp_path: Path) -> None:
    assert (
        explain_exit(2, tmp_path / "nope.log", tmp_path / "nope.err").reason
        == "firecracker exited with code 2"
    )
