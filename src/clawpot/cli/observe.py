"""`clawpot logs` (a VM's serial console) and `clawpot events` (every VM state change, as it happens).

The console is the guest's own text, so by default every control character is shown escaped
(``terminal.safe``: no escape sequence reaches the terminal); line breaks stay line breaks, and the
serial port's CR LF becomes LF. ``--raw`` writes the bytes as they came (for a file or a pipe).
"""

from __future__ import annotations

import codecs
import json
import sys
import time

import click
from google.protobuf.timestamp_pb2 import Timestamp

from clawpot import limits
from clawpot.cli.connection import stub
from clawpot.cli.terminal import safe
from clawpot.v1 import vm_pb2

EXIT_INTERRUPTED = 130


class ConsoleText:
    """Console bytes → text safe for a terminal, chunk by chunk: a UTF-8 character or a CR LF split
    across two chunks is put back together."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending_cr = False

    def feed(self, data: bytes, *, final: bool = False) -> str:
        text = self._decoder.decode(data, final=final)
        if self._pending_cr:
            text = "\r" + text
        self._pending_cr = text.endswith("\r") and not final
        if self._pending_cr:
            text = text[:-1]
        return safe(text.replace("\r\n", "\n"), multiline=True)


@click.command()
@click.argument("vm_id", metavar="ID")
@click.option("--follow", "-f", is_flag=True, help="Keep printing what the VM prints, until it ends.")
@click.option(
    "--tail",
    type=click.IntRange(0, limits.LOGS_TAIL_MAX_LINES),
    default=None,
    metavar="N",
    help=f"Start with the last N lines (at most {limits.LOGS_TAIL_MAX_LINES}); default: all that is kept.",
)
@click.option("--raw", is_flag=True, help="Write the console bytes unchanged (control characters too).")
@click.pass_obj
def logs(server: str, vm_id: str, follow: bool, tail: int | None, raw: bool) -> None:
    """Print a VM's serial console (kept until the VM is deleted, also after it crashed).

    The console keeps the last 1 MiB and its predecessor. With -f it follows until the VM is deleted or
    ends in Error (Ctrl+C stops earlier).
    """
    request = vm_pb2.StreamLogsRequest(id=vm_id, follow=follow)
    if tail is not None:
        request.tail_lines = tail
    text = ConsoleText()
    out = sys.stdout
    try:
        with stub(server) as api:
            for chunk in api.StreamLogs(request):
                if raw:
                    out.buffer.write(chunk.data)
                    out.buffer.flush()
                else:
                    out.write(text.feed(chunk.data))
                    out.flush()
            if not raw:
                out.write(text.feed(b"", final=True))
                out.flush()
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)


_KINDS = {v: k.removeprefix("VM_EVENT_KIND_").lower() for k, v in vm_pb2.VmEventKind.items()}
_STATES = {v: k.removeprefix("VM_STATE_").lower() for k, v in vm_pb2.VmState.items()}
_BACKENDS = {v: k.removeprefix("BACKEND_").lower() for k, v in vm_pb2.Backend.items()}
_ORIGINS = {v: k.removeprefix("VM_ORIGIN_").lower() for k, v in vm_pb2.VmOrigin.items()}


def event_to_dict(event: vm_pb2.VmEvent) -> dict[str, object]:
    return {
        "sequence": event.sequence,
        "at": event.at.ToJsonString(),
        "vm_id": event.vm_id,
        "kind": _KINDS.get(event.kind, str(event.kind)),
        "state": _STATES.get(event.state, str(event.state)),
        "backend": _BACKENDS.get(event.backend, str(event.backend)),
        "origin": _ORIGINS.get(event.origin, str(event.origin)),
        "reason": event.reason,
    }


def _line(event: dict[str, object]) -> str:
    at = time.strftime("%H:%M:%S", time.localtime(_seconds(str(event["at"]))))
    reason = f"  {event['reason']}" if event["reason"] else ""
    text = (
        f"{event['sequence']}  {at}  {event['vm_id']}  {event['kind']:<8} {event['state']:<9} "
        f"{event['backend']} {event['origin']}{reason}"
    )
    return safe(text)


def _seconds(stamp: str) -> float:
    parsed = Timestamp()
    parsed.FromJsonString(stamp)
    return parsed.ToNanoseconds() / 1e9


@click.command()
@click.option(
    "--since",
    type=click.IntRange(min=0),
    default=None,
    metavar="SEQ",
    help="Start after event SEQ (0: every event the server still keeps); default: only new events.",
)
@click.option("--no-follow", is_flag=True, help="Print the events kept now and exit.")
@click.option("--output", "-o", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.pass_obj
def events(server: str, since: int | None, no_follow: bool, output: str) -> None:
    """Print every VM state change (created, running, paused, resumed, error, deleted) as it happens.

    \b
    Each line starts with the event's sequence number: after a lost connection, `--since SEQ` with
    the last one printed resumes without a gap (or fails with OUT_OF_RANGE if the server no longer
    keeps those events). -o json prints one JSON object per line.
    """
    request = vm_pb2.WatchVmsRequest(no_follow=no_follow)
    if since is not None:
        request.since_sequence = since
    try:
        with stub(server) as api:
            for event in api.WatchVms(request):
                data = event_to_dict(event)
                click.echo(json.dumps(data) if output == "json" else _line(data))
                sys.stdout.flush()
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
