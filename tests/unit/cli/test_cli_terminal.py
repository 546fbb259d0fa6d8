"""Terminal safety: ``safe`` escapes control sequences, and what the CLI prints from a server goes through it.

The sanitiser is tested on the sequences an attacker would send. The CLI is then run for real (the
``clawpot`` program, over a real unix socket) against a gRPC server whose answers are hostile: that
server is a stand-in written here, because the point is what the CLI does with *any* text a server or
guest hands it (tests/integration covers the real server). Exec output must stay byte-exact.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from clawpot.cli.terminal import safe
from clawpot.v1 import vm_pb2, vm_pb2_grpc

CLAWPOT = Path(sys.executable).parent / "clawpot"
# Anything a terminal would interpret: C0 (but not \n), DEL, C1, bidi overrides.
RAW_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")

OSC_TITLE = "\x1b]0;pwned\x07"
CSI_CLEAR = "\x1b[2J\x1b[H"
HOSTILE = f"agent says {OSC_TITLE}{CSI_CLEAR}\x9b31m\x9d8;;http://evil\x9c\rfake prompt$ \u202eexe.txt\x1b"


# -- the sanitiser -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("\x1b]0;pwned title\x07", "\\e]0;pwned title\\x07"),  # OSC: set the window title (BEL end)
        ("\x1b]52;c;ZXZpbA==\x1b\\", "\\e]52;c;ZXZpbA==\\e\\"),  # OSC 52 clipboard write (ST end)
        ("\x1b[2J\x1b[H", "\\e[2J\\e[H"),  # CSI: clear the screen, cursor home
        ("\x9b2J", "\\x9b2J"),  # C1 CSI (8-bit)
        ("\x9d0;t\x9c", "\\x9d0;t\\x9c"),  # C1 OSC ... C1 ST
        ("bare \x1b", "bare \\e"),  # a lone ESC at the end
        ("done\rERROR", "done\\rERROR"),  # CR: overwrite the start of the line
        ("a\bb\x7f", "a\\x08b\\x7f"),  # backspace, DEL
        ("two\nlines", "two\\nlines"),
        ("tab\there", "tab\\there"),
        ("file\u202egnp.exe", "file\\u202egnp.exe"),  # bidi override ("Trojan source")
        ("\x00nul", "\\x00nul"),
    ],
)
def test_safe_escapes_control_sequences(text: str, expected: str) -> None:
    assert safe(text) == expected
    assert RAW_CONTROL.search(safe(text)) is None and "\n" not in safe(text)


def test_safe_keeps_unicode_and_plain_text() -> None:
    text = "héllo wörld — 世界 🐍 👨\u200d👩\u200d👧 [bold]not markup[/bold] 100% ok"
    assert safe(text) == text


def test_safe_multiline_keeps_only_newlines() -> None:
    assert safe("one\ntwo\r\n\x1b[1mthree", multiline=True) == "one\ntwo\\r\n\\e[1mthree"


def test_safe_undecodable_bytes_are_escaped() -> None:
    text = b"ok \xff\x1b".decode("utf-8", errors="surrogateescape")
    assert safe(text) == "ok \\udcff\\e"


# -- the CLI against a hostile server -----------------------------------------------------------------

EXEC_BYTES = b"raw \x1b]0;title\x07\x1b[2J\x9b\r\x00\xff bytes\n"
EXEC_ERR = b"err \x1b[31mred\x1b[0m\r\n"


class HostileServicer(vm_pb2_grpc.VmServiceServicer):
    """Answers with guest-like hostile text everywhere the CLI prints server text."""

    def GetVm(self, request: vm_pb2.GetVmRequest, context: grpc.ServicerContext) -> vm_pb2.Vm:
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, HOSTILE)

    def CreateVm(self, request: vm_pb2.CreateVmRequest, context: grpc.ServicerContext) -> vm_pb2.Vm:
        return vm_pb2.Vm(id="vm\x1b]0;t\x07id")

    def DeleteVm(self, request: vm_pb2.DeleteVmRequest, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.NOT_FOUND, "\x1b[2Jgone\nsecond line \x1b[31m")

    def ListVms(self, request: vm_pb2.ListVmsRequest, context: grpc.ServicerContext) -> Any:
        vm = vm_pb2.Vm(
            id="x\x1b[2Jy",
            state=vm_pb2.VM_STATE_RUNNING,
            backend=vm_pb2.BACKEND_QEMU,
            vcpus=1,
            memory_mib=256,
            ip_address="[link=http://evil]10.0.0.2[/link]\x1b]8;;http://evil\x07",
            labels={"name": HOSTILE},
            error=HOSTILE,
            created_at=Timestamp(seconds=1),
        )
        return vm_pb2.ListVmsResponse(vms=[vm])

    def Exec(self, request_iterator: Iterator[vm_pb2.ExecRequest], context: grpc.ServicerContext) -> Any:
        next(request_iterator)
        yield vm_pb2.ExecResponse(stdout=EXEC_BYTES)
        yield vm_pb2.ExecResponse(stderr=EXEC_ERR)
        yield vm_pb2.ExecResponse(exit=vm_pb2.ExitStatus(exit_code=3))


@pytest.fixture
def hostile_server(tmp_path: Path) -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    vm_pb2_grpc.add_VmServiceServicer_to_server(HostileServicer(), server)
    url = f"unix:{tmp_path / 'hostile.sock'}"
    assert server.add_insecure_port(url)
    server.start()
    try:
        yield url
    finally:
        server.stop(0)


def _cli(url: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [str(CLAWPOT), "--server", url, *args],
        capture_output=True,
        timeout=60,
        check=False,
        env={**os.environ, "COLUMNS": "300"},
    )


def _printable(out: bytes) -> str:
    text = out.decode("utf-8", errors="strict")  # the CLI's own text is valid UTF-8
    assert RAW_CONTROL.search(text) is None, text
    return text


def test_error_messages_are_escaped_and_one_line(hostile_server: str) -> None:
    for args, code in ((("get", "vm"), "FAILED_PRECONDITION"), (("delete", "vm"), "NOT_FOUND")):
        result = _cli(hostile_server, *args)
        assert result.returncode == 1
        err = _printable(result.stderr)
        assert err.startswith(f"clawpot: {code}: ") and err.count("\n") == 1, err
    err = _printable(_cli(hostile_server, "get", "vm").stderr)
    assert "\\e]0;pwned\\x07" in err and "\\e[2J" in err and "\\x9b31m" in err and "\\rfake prompt" in err


def test_list_table_and_create_output_are_escaped(hostile_server: str) -> None:
    table = _cli(hostile_server, "list")
    assert table.returncode == 0, table.stderr
    text = _printable(table.stdout)
    assert "x\\e[2Jy" in text
    # Rich markup in a server string is printed as text, never turned into a hyperlink (OSC 8).
    assert "[link=http://evil]10.0.0.2[/link]\\e]8;;http://evil\\x07" in text
    created = _cli(hostile_server, "create")
    assert created.returncode == 0 and _printable(created.stdout) == "vm\\e]0;t\\x07id\n"


def test_json_output_escapes_and_names_enums_like_the_table(hostile_server: str) -> None:
    result = _cli(hostile_server, "list", "--output", "json")
    assert result.returncode == 0, result.stderr
    text = _printable(result.stdout)
    [vm] = json.loads(text)
    assert (vm["state"], vm["backend"]) == ("running", "qemu")
    assert vm["labels"]["name"] == HOSTILE and vm["error"] == HOSTILE  # escaped on screen, exact as data


def test_exec_output_stays_byte_exact(hostile_server: str) -> None:
    result = _cli(hostile_server, "exec", "vm", "--", "cat")
    assert result.returncode == 3
    assert result.stdout == EXEC_BYTES and result.stderr == EXEC_ERR
