"""Every bad request gets its gRPC status code and a one-line message, and leaves nothing behind.

Through the real server's API (gRPC stubs over its unix socket), with one real QEMU/TCG VM shared by
the module, plus creates that are interrupted on purpose: by a delete, and by the client going away.
The server runs with ``--agent-timeout 3`` so a frozen guest turns into UNAVAILABLE quickly.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator

import grpc
import pytest
from server_harness import (
    InstalledAssets,
    ServerProcess,
    code_of,
    proc_exists,
    server_in_namespace,
    wait_until,
)

from clawpot.limits import MAX_MEMORY_MIB
from clawpot.v1 import vm_pb2
from clawpot.vm.validation import host_available_mib

Code = grpc.StatusCode


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, installed_assets: InstalledAssets
) -> Iterator[ServerProcess]:
    with server_in_namespace(
        tmp_path_factory.mktemp("errors"), installed_assets, "--no-network", "--agent-timeout", "3"
    ) as srv:
        yield srv


@pytest.fixture(scope="module")
def vm(server: ServerProcess) -> str:
    with server.stub() as api:
        created = api.CreateVm(vm_pb2.CreateVmRequest(backend=vm_pb2.BACKEND_QEMU), timeout=180)
    assert created.state == vm_pb2.VM_STATE_RUNNING
    assert (created.vcpus, created.memory_mib) == (1, 256)  # the API's defaults
    return created.id


def _exec(api: object, vm_id: str, argv: list[str], **start: object) -> list[vm_pb2.ExecResponse]:
    request = vm_pb2.ExecRequest(start=vm_pb2.ExecStart(vm_id=vm_id, argv=argv, **start))  # type: ignore[arg-type]
    return list(api.Exec(iter([request]), timeout=60))  # type: ignore[attr-defined]


def _upload(api: object, vm_id: str, path: str) -> object:
    requests = [
        vm_pb2.UploadFileRequest(header=vm_pb2.UploadHeader(vm_id=vm_id, path=path)),
        vm_pb2.UploadFileRequest(chunk=b"data"),
    ]
    return api.UploadFile(iter(requests), timeout=60)  # type: ignore[attr-defined]


def _download(api: object, vm_id: str, path: str) -> list[vm_pb2.DownloadFileResponse]:
    request = vm_pb2.DownloadFileRequest(vm_id=vm_id, path=path)
    return list(api.DownloadFile(request, timeout=60))  # type: ignore[attr-defined]


def _assert_only(server: ServerProcess, *vm_ids: str) -> None:
    """Rows, VM directories and QEMU processes: exactly these VMs, nothing a failed call left."""
    wanted = set(vm_ids)
    assert {row[0] for row in server.db_rows("SELECT id FROM vms")} == wanted
    assert set(server.vms()) == wanted
    assert server.vm_dirs() == wanted
    assert set(server.vmm_pids()) == wanted


def _check(expected: Code, call: object, *, contains: str = "") -> str:
    code, message = code_of(call)  # type: ignore[arg-type]
    assert code == expected, (code, message)
    assert message and "\n" not in message, repr(message)
    assert contains in message, message
    return message


def test_invalid_arguments(server: ServerProcess, vm: str) -> None:
    with server.stub() as api:
        create = api.CreateVm
        _check(
            Code.INVALID_ARGUMENT,
            lambda: create(vm_pb2.CreateVmRequest(vcpus=33), timeout=30),
            contains="vcpus",
        )
        _check(
            Code.INVALID_ARGUMENT,
            lambda: create(vm_pb2.CreateVmRequest(memory_mib=16), timeout=30),
            contains="memory",
        )
        _check(
            Code.INVALID_ARGUMENT,
            lambda: create(vm_pb2.CreateVmRequest(memory_mib=MAX_MEMORY_MIB + 1), timeout=30),
            contains="memory",
        )
        # This server runs without networking: asking for an address is a mistake, not ignored.
        _check(
            Code.INVALID_ARGUMENT,
            lambda: create(vm_pb2.CreateVmRequest(ip_address="192.168.100.9"), timeout=30),
        )
        _check(Code.INVALID_ARGUMENT, lambda: create(vm_pb2.CreateVmRequest(labels={"": "x"}), timeout=30))
        for bad_id in ("../etc", "", "a/b", "x" * 65, "-leading-dash"):
            get = vm_pb2.GetVmRequest(id=bad_id)
            delete = vm_pb2.DeleteVmRequest(id=bad_id)
            _check(Code.INVALID_ARGUMENT, lambda: api.GetVm(get, timeout=30))  # noqa: B023 - called at once
            _check(Code.INVALID_ARGUMENT, lambda: api.DeleteVm(delete, timeout=30))  # noqa: B023
        _check(Code.INVALID_ARGUMENT, lambda: _exec(api, vm, []), contains="argv")
        _check(Code.INVALID_ARGUMENT, lambda: _exec(api, vm, ["true"], timeout_seconds=-1))
        not_start = vm_pb2.ExecRequest(stdin=b"x")
        _check(Code.INVALID_ARGUMENT, lambda: list(api.Exec(iter([not_start]), timeout=30)))
        _check(Code.INVALID_ARGUMENT, lambda: _upload(api, vm, "relative/path"), contains="absolute")
        _check(Code.INVALID_ARGUMENT, lambda: _download(api, vm, "/etc/pass\0wd"), contains="NUL")
        _check(
            Code.INVALID_ARGUMENT,
            lambda: api.UploadFile(iter([vm_pb2.UploadFileRequest(chunk=b"x")]), timeout=30),
            contains="header",
        )
    _assert_only(server, vm)


def test_not_found(server: ServerProcess, vm: str) -> None:
    with server.stub() as api:
        for call in (
            lambda: api.GetVm(vm_pb2.GetVmRequest(id="nosuchvm"), timeout=30),
            lambda: api.DeleteVm(vm_pb2.DeleteVmRequest(id="nosuchvm"), timeout=30),
            lambda: _exec(api, "nosuchvm", ["true"]),
            lambda: _upload(api, "nosuchvm", "/tmp/x"),
            lambda: _download(api, "nosuchvm", "/etc/hostname"),
        ):
            _check(Code.NOT_FOUND, call, contains="nosuchvm")
        _check(Code.NOT_FOUND, lambda: _download(api, vm, "/no/such/file"), contains="/no/such/file")
        # A program that cannot start is no API error: it exits 127 with the reason on stderr, as in a shell.
        replies = _exec(api, vm, ["/no/such/program"])
        assert (
            b"".join(r.stderr for r in replies) == b"clawpot: /no/such/program: No such file or directory\n"
        )
        assert replies[-1].exit.exit_code == 127
    _assert_only(server, vm)


def test_resource_exhausted_host_memory(server: ServerProcess, vm: str) -> None:
    available = host_available_mib()
    assert available is not None
    too_much = available + 1024  # valid (far below MAX_MEMORY_MIB) but more than the host has
    assert too_much <= MAX_MEMORY_MIB
    with server.stub() as api:
        _check(
            Code.RESOURCE_EXHAUSTED,
            lambda: api.CreateVm(vm_pb2.CreateVmRequest(memory_mib=too_much), timeout=30),
            contains="memory",
        )
    _assert_only(server, vm)


def test_deadline_exceeded_kills_the_command(server: ServerProcess, vm: str) -> None:
    with server.stub() as api:
        _check(
            Code.DEADLINE_EXCEEDED,
            lambda: _exec(
                api, vm, ["sh", "-c", "echo $$ > /tmp/slow.pid; exec sleep 600"], timeout_seconds=1.5
            ),
            contains="timed out",
        )
        check = _exec(api, vm, ["sh", "-c", 'kill -0 "$(cat /tmp/slow.pid)"'])
    assert check[-1].exit.exit_code != 0  # the process group is gone


def test_frozen_guest_is_unavailable_then_recovers(server: ServerProcess, vm: str) -> None:
    """SIGSTOP on the VM's QEMU freezes the guest: its agent cannot answer, the VM is still Running."""
    pid = server.vmm_pids()[vm]
    os.kill(pid, signal.SIGSTOP)
    try:
        with server.stub() as api:
            started = time.monotonic()
            _check(Code.UNAVAILABLE, lambda: _exec(api, vm, ["true"]), contains="did not answer")
            waited = time.monotonic() - started
            _check(Code.UNAVAILABLE, lambda: _download(api, vm, "/etc/hostname"))
            _check(Code.UNAVAILABLE, lambda: _upload(api, vm, "/tmp/frozen"))
        print(f"\nexec on a frozen guest: UNAVAILABLE after {waited:.1f} s (--agent-timeout 3)")
    finally:
        os.kill(pid, signal.SIGCONT)
    with server.stub() as api:
        replies = _exec(api, vm, ["echo", "thawed"])
    assert b"".join(r.stdout for r in replies) == b"thawed\n" and replies[-1].exit.exit_code == 0
    _assert_only(server, vm)


def test_exec_while_starting_then_delete_during_create(server: ServerProcess, vm: str) -> None:
    with server.stub() as api:
        future = api.CreateVm.future(vm_pb2.CreateVmRequest(), timeout=180)
        starting: list[str] = []

        def appeared() -> bool:
            starting[:] = [v for v in server.vms() if v != vm]
            return bool(starting) and starting[0] in server.vmm_pids()

        wait_until(appeared, 60, "the new VM's QEMU to run")
        new = starting[0]
        qemu = server.vmm_pids()[new]
        os.kill(qemu, signal.SIGSTOP)  # hold the guest before its agent answers: it stays Starting
        try:
            assert server.vms()[new].state == vm_pb2.VM_STATE_STARTING
            _check(Code.FAILED_PRECONDITION, lambda: _exec(api, new, ["true"]), contains="not Running")
            _check(
                Code.FAILED_PRECONDITION, lambda: _download(api, new, "/etc/hostname"), contains="not Running"
            )
        finally:
            os.kill(qemu, signal.SIGCONT)
        api.DeleteVm(vm_pb2.DeleteVmRequest(id=new), timeout=60)
        _check(Code.FAILED_PRECONDITION, lambda: future.result(), contains="deleted")
    assert not proc_exists(qemu)
    _assert_only(server, vm)


def test_create_cancelled_by_the_client_leaves_nothing(server: ServerProcess, vm: str) -> None:
    pids: dict[str, int] = {}

    def booting() -> bool:
        pids.update(server.vmm_pids())
        return len(pids) == 2

    client = server.cli_popen("create", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_until(booting, 60, "the new VM's QEMU to run")
    finally:
        client.kill()  # the client goes away mid-create (by PID: it is ours)
        client.communicate(timeout=10)
    (qemu,) = (pid for vm_id, pid in pids.items() if vm_id != vm)
    wait_until(lambda: set(server.vms()) == {vm}, 60, "the server to discard the abandoned VM")
    wait_until(lambda: not proc_exists(qemu), 30, "the abandoned VM's QEMU to exit")
    _assert_only(server, vm)
