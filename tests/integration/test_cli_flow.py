"""The `clawpot` CLI against a real `clawpot-server`, with one real QEMU/TCG VM shared by the module.

The seed flow (create --vcpus 2 --memory 512, list, exec -- uname -a, delete), exit codes, stdin,
50 MB of streamed output against the server's RSS, --timeout, a 20 MB copy in and out, and the
one-line errors and exit codes of the CLI itself. The server runs without networking here
(test_vm_network.py covers that) inside a namespace of its own, so whatever it starts dies with it.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from server_harness import InstalledAssets, ServerProcess, parse_table, run_cli, server_in_namespace

EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_TIMEOUT = 1, 2, 3, 124
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, installed_assets: InstalledAssets
) -> Iterator[ServerProcess]:
    with server_in_namespace(tmp_path_factory.mktemp("cli"), installed_assets, "--no-network") as srv:
        yield srv


@pytest.fixture(scope="module")
def vm(server: ServerProcess) -> str:
    started = time.monotonic()
    vm_id = server.create("--vcpus", "2", "--memory", "512")
    print(f"\ncreate --vcpus 2 --memory 512 (QEMU/TCG, to agent ready): {time.monotonic() - started:.1f} s")
    return vm_id


def test_create_list_get_show_the_vm(server: ServerProcess, vm: str) -> None:
    rows = parse_table(server.cli_ok("list"))
    assert [row["ID"] for row in rows] == [vm]
    row = rows[0]
    assert (row["STATE"], row["BACKEND"], row["VCPUS"], row["MEMORY"], row["IP"]) == (
        "Running",
        "qemu",
        "2",
        "512MiB",
        "-",
    )
    as_json = json.loads(server.cli_ok("list", "--output", "json"))
    assert [(v["id"], v["state"], v["vcpus"], v["memory_mib"]) for v in as_json] == [(vm, "running", 2, 512)]
    got = json.loads(server.cli_ok("get", vm))
    assert (got["id"], got["state"], got["backend"]) == (vm, "running", "qemu")
    # The sizes reached the guest, not just the table.
    assert server.exec(vm, "nproc").stdout.strip() == "2"
    mem_kib = int(
        server.exec(vm, "sh", "-c", "grep MemTotal /proc/meminfo | tr -s ' ' | cut -d' ' -f2").stdout
    )
    assert 400 * 1024 < mem_kib <= 512 * 1024
    assert server.vm_dirs() == {vm} and set(server.vmm_pids()) == {vm}


def test_exec_uname(server: ServerProcess, vm: str) -> None:
    result = server.exec(vm, "uname", "-a")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Linux ") and vm in result.stdout  # the hostname is the VM id
    assert result.stderr == ""


def test_exec_passes_exit_codes_and_streams_through(server: ServerProcess, vm: str) -> None:
    assert server.exec(vm, "sh", "-c", "exit 7").returncode == 7
    assert server.exec(vm, "true").returncode == 0
    killed = server.exec(vm, "sh", "-c", "kill -9 $$")
    assert killed.returncode == 128 + 9
    split = server.exec(vm, "sh", "-c", "echo to-out; echo to-err >&2; exit 3")
    assert (split.returncode, split.stdout, split.stderr) == (3, "to-out\n", "to-err\n")
    env_cwd = server.cli(
        "exec", vm, "--env", "GREETING=hi there", "--cwd", "/tmp", "--", "sh", "-c", 'echo "$GREETING"; pwd'
    )
    assert (env_cwd.returncode, env_cwd.stdout) == (0, "hi there\n/tmp\n")


def test_exec_stdin_is_piped_in(server: ServerProcess, vm: str) -> None:
    data = os.urandom(3 * MIB)
    result = server.cli("exec", "-i", vm, "--", "sha256sum", input=data)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == hashlib.sha256(data).hexdigest()
    # Without -i the command's stdin is closed at once (it does not wait for ours).
    assert server.cli("exec", vm, "--", "cat", input=b"ignored").stdout == ""


def test_50mb_of_output_streams_without_growing_the_server(server: ServerProcess, vm: str) -> None:
    size = 50 * MIB
    line = b"clawpot streams 50 MB through the server\n"
    expected = hashlib.sha256((line * (size // len(line) + 1))[:size]).hexdigest()
    before = server.rss_kib()
    peak = before
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.05):
            peak = max(peak, server.rss_kib())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.monotonic()
    proc = server.cli_popen(
        "exec", vm, "--", "sh", "-c", f"yes '{line.decode().strip()}' | head -c {size}", stdout=-1, stderr=-1
    )
    assert proc.stdout is not None and proc.stderr is not None
    digest, received = hashlib.sha256(), 0
    while chunk := proc.stdout.read(MIB):
        digest.update(chunk)
        received += len(chunk)
    returncode = proc.wait(120)
    elapsed = time.monotonic() - started
    done.set()
    sampler.join()
    after = server.rss_kib()
    print(
        f"\n50 MB exec stream: {elapsed:.1f} s ({size / MIB / elapsed:.1f} MB/s); server VmRSS before "
        f"{before / 1024:.1f} MiB, peak {peak / 1024:.1f} MiB, after {after / 1024:.1f} MiB"
    )
    assert returncode == 0, proc.stderr.read().decode()
    assert (received, digest.hexdigest()) == (size, expected)
    assert max(peak, after) - before < 32 * 1024, "the server's RSS grew by 32 MiB or more"


def test_timeout_kills_the_command_and_exits_124(server: ServerProcess, vm: str) -> None:
    result = server.cli(
        "exec", vm, "--timeout", "2", "--", "sh", "-c", "echo $$ > /tmp/timed.pid; exec sleep 600"
    )
    assert result.returncode == EXIT_TIMEOUT, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "timed out" in result.stderr
    # The process group was killed, not left behind in the guest.
    assert server.exec(vm, "sh", "-c", 'kill -0 "$(cat /tmp/timed.pid)"').returncode != 0


def test_cp_20mb_in_and_out(server: ServerProcess, vm: str, tmp_path: Path) -> None:
    local = tmp_path / "blob.bin"
    data = os.urandom(20 * MIB)
    local.write_bytes(data)
    local.chmod(0o640)
    digest = hashlib.sha256(data).hexdigest()
    started = time.monotonic()
    server.cli_ok("cp", str(local), f"{vm}:/var/tmp/blob.bin")
    upload = time.monotonic() - started
    in_guest = server.exec(
        vm, "sh", "-c", "sha256sum /var/tmp/blob.bin; stat -c %a /var/tmp/blob.bin"
    ).stdout.split()
    assert (in_guest[0], in_guest[-1]) == (digest, "640")
    back_dir = tmp_path / "back"
    back_dir.mkdir()
    started = time.monotonic()
    server.cli_ok("cp", f"{vm}:/var/tmp/blob.bin", str(back_dir))  # into a directory: keeps the name
    download = time.monotonic() - started
    back = back_dir / "blob.bin"
    assert hashlib.sha256(back.read_bytes()).hexdigest() == digest
    assert stat.S_IMODE(back.stat().st_mode) == 0o640
    assert [p.name for p in back_dir.iterdir()] == ["blob.bin"]  # no temp file left
    print(f"\ncp 20 MiB: in {upload:.1f} s, out {download:.1f} s")


def test_cp_errors_are_one_line_and_leave_nothing(server: ServerProcess, vm: str, tmp_path: Path) -> None:
    missing = server.cli("cp", f"{vm}:/no/such/file", str(tmp_path / "out"))
    assert missing.returncode == EXIT_FAILED and missing.stderr.startswith("clawpot: NOT_FOUND: ")
    assert list(tmp_path.iterdir()) == []  # no partial download
    local = tmp_path / "f"
    local.write_bytes(b"x")
    relative = server.cli("cp", str(local), f"{vm}:relative/path")
    assert relative.returncode == EXIT_FAILED and relative.stderr.startswith("clawpot: INVALID_ARGUMENT: ")
    both_local = server.cli("cp", str(local), str(tmp_path / "g"))
    assert both_local.returncode == EXIT_USAGE
    for result in (missing, relative, both_local):
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_bad_requests_get_their_code_in_one_line(server: ServerProcess, vm: str) -> None:
    cases = {
        ("get", "no-such-vm"): "NOT_FOUND",
        ("exec", "no-such-vm", "--", "true"): "NOT_FOUND",
        ("delete", "no-such-vm"): "NOT_FOUND",
        ("get", "../etc"): "INVALID_ARGUMENT",
        ("create", "--memory", "16"): "INVALID_ARGUMENT",
    }
    for args, code in cases.items():
        result = server.cli(*args)
        assert result.returncode == EXIT_FAILED, (args, result.stderr)
        assert result.stderr.startswith(f"clawpot: {code}: "), (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, (args, result.stderr)
    # A program that cannot run is not a bad request: it exits as it would in a shell.
    missing = server.cli("exec", vm, "--", "/no/such/program")
    assert (missing.returncode, missing.stdout) == (127, "")
    assert missing.stderr == "clawpot: /no/such/program: No such file or directory\n"
    not_executable = server.cli("exec", vm, "--", "/etc/passwd")  # mode 0644
    assert (not_executable.returncode, not_executable.stderr) == (
        126,
        "clawpot: /etc/passwd: Permission denied\n",
    )
    usage = server.cli("create", "--vcpus", "0")  # the CLI refuses it before asking the server
    assert usage.returncode == EXIT_USAGE
    assert server.vm_dirs() == {vm} and set(server.vmm_pids()) == {vm} and set(server.vms()) == {vm}


def test_unreachable_server_is_one_line_naming_the_url(server: ServerProcess, tmp_path: Path) -> None:
    for url in (f"unix:{tmp_path / 'nobody.sock'}", "127.0.0.1:1"):
        result = run_cli(url, "list", timeout=60)
        assert result.returncode == EXIT_UNREACHABLE, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and url in lines[0], result.stderr


def test_health_reflection_and_socket_mode(server: ServerProcess) -> None:
    assert stat.S_IMODE(server.socket.stat().st_mode) == 0o600
    for service in ("", "clawpot.v1.VmService"):
        assert server.health(service) == health_pb2.HealthCheckResponse.SERVING
    with grpc.insecure_channel(server.url) as channel:
        replies = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
        )
        names = {s.name for reply in replies for s in reply.list_services_response.service}
    assert {"clawpot.v1.VmService", "grpc.health.v1.Health"} <= names


def test_delete_frees_everything(server: ServerProcess, vm: str) -> None:
    started = time.monotonic()
    assert server.cli_ok("delete", vm).strip() == vm
    print(f"\ndelete: {time.monotonic() - started:.1f} s")
    assert parse_table(server.cli_ok("list")) == []
    assert server.vm_dirs() == set() and server.vmm_pids() == {}
    assert server.db_rows("SELECT id FROM vms") == []
    gone = server.exec(vm, "true")
    assert gone.returncode == EXIT_FAILED and "NOT_FOUND" in gone.stderr
