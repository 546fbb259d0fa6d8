"""`clawpot exec ID [options] -- CMD ARGS`: run a command in a VM, stream its output, pass its exit code."""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import signal
import sys
import termios
import threading
import tty
from collections.abc import Iterator
from types import FrameType

import click
import grpc

from clawpot.cli.connection import (
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    die,
    fail_rpc,
    is_connect_failure,
    open_channel,
)
from clawpot.cli.terminal import safe
from clawpot.v1 import vm_pb2, vm_pb2_grpc

EXIT_TIMEOUT = 124  # as coreutils `timeout`
_STDIN_CHUNK = 64 * 1024
_END = object()


def _parse_env(values: tuple[str, ...]) -> dict[str, str]:
    env = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key:
            die(f"--env expects KEY=VALUE, got {value!r}", EXIT_USAGE)
        env[key] = val
    return env


class _Requests:
    """The request stream: ``start`` first, then stdin chunks / resizes / EOF fed from other threads."""

    def __init__(self, start: vm_pb2.ExecStart) -> None:
        self._start = start
        self._queue: queue.Queue[vm_pb2.ExecRequest | object] = queue.Queue()

    def put(self, request: vm_pb2.ExecRequest) -> None:
        self._queue.put(request)

    def close(self) -> None:
        self._queue.put(_END)

    def __iter__(self) -> Iterator[vm_pb2.ExecRequest]:
        yield vm_pb2.ExecRequest(start=self._start)
        while (item := self._queue.get()) is not _END:
            assert isinstance(item, vm_pb2.ExecRequest)
            yield item


def _pump_stdin(requests: _Requests) -> None:
    fd = sys.stdin.fileno()
    while chunk := os.read(fd, _STDIN_CHUNK):
        requests.put(vm_pb2.ExecRequest(stdin=chunk))
    requests.put(vm_pb2.ExecRequest(close_stdin=True))


@contextlib.contextmanager
def _raw_terminal(enabled: bool) -> Iterator[None]:
    if not enabled or not sys.stdin.isatty():
        yield
        return
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


@click.command("exec", context_settings={"ignore_unknown_options": False})
@click.argument("vm_id", metavar="ID")
@click.argument("argv", metavar="-- CMD [ARGS]...", nargs=-1, required=True)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=0,
    metavar="S",
    help="Kill the command's process group after S seconds (exit 124). 0: no limit.",
)
@click.option("--env", "-e", "env", multiple=True, metavar="K=V", help="Set an environment variable.")
@click.option("--cwd", "-w", default="", metavar="DIR", help="Working directory in the guest.")
@click.option("--interactive", "-i", is_flag=True, help="Stream this process's stdin to the command.")
@click.option("--tty", "-t", is_flag=True, help="Run the command on a pseudo-terminal.")
@click.pass_obj
def exec_command(
    server: str,
    vm_id: str,
    argv: tuple[str, ...],
    timeout: float,
    env: tuple[str, ...],
    cwd: str,
    interactive: bool,
    tty: bool,
) -> None:
    """Run CMD in VM ID; its stdout/stderr stream to yours and its exit code becomes clawpot's."""
    cols, rows = shutil.get_terminal_size()
    requests = _Requests(
        vm_pb2.ExecStart(
            vm_id=vm_id,
            argv=list(argv),
            env=_parse_env(env),
            cwd=cwd,
            timeout_seconds=timeout,
            tty=tty,
            rows=rows,
            cols=cols,
            stdin=interactive,
        )
    )
    if interactive:
        threading.Thread(target=_pump_stdin, args=(requests,), daemon=True).start()
    if tty:

        def on_resize(_sig: int, _frame: FrameType | None) -> None:
            c, r = shutil.get_terminal_size()
            requests.put(vm_pb2.ExecRequest(resize=vm_pb2.TerminalSize(rows=r, cols=c)))

        signal.signal(signal.SIGWINCH, on_resize)

    exit_code = 1
    streaming = False
    channel = open_channel(server)
    try:
        with _raw_terminal(tty):
            for response in vm_pb2_grpc.VmServiceStub(channel).Exec(iter(requests)):
                streaming = True
                kind = response.WhichOneof("kind")
                if kind == "stdout":
                    _write(sys.stdout.buffer, response.stdout)
                elif kind == "stderr":
                    _write(sys.stderr.buffer, response.stderr)
                elif kind == "exit":
                    status = response.exit
                    exit_code = 128 + status.signal if status.signal else status.exit_code
    except grpc.RpcError as exc:
        if isinstance(exc, grpc.Call) and exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
            click.echo(f"clawpot: {safe(exc.details() or 'timed out')}", err=True)
            sys.exit(EXIT_TIMEOUT)
        if streaming and is_connect_failure(exc):
            # Reached the server, then lost it (server stopped or killed): not "cannot reach".
            die(f"lost the connection to clawpot-server at {server} while the command ran", EXIT_UNREACHABLE)
        fail_rpc(exc, server)
    finally:
        requests.close()
        channel.close()
    sys.exit(exit_code)


def _write(stream: object, data: bytes) -> None:
    stream.write(data)  # type: ignore[attr-defined]
    stream.flush()  # type: ignore[attr-defined]
