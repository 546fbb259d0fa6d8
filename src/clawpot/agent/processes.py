"""The agent's table of managed processes: processes that outlive the stream that started them.

An ``exec`` process belongs to its stream (and dies with it). A managed process (``proc_start``) belongs
to the agent: it keeps running when the host detaches or its connection is lost, is found again by pid
or tag, and takes input, signals and resizes from any later stream. This is what E2B's envd offers
(``process.Process``), served by the host in ``clawpot.e2b.envd``.

Output goes to every attached listener (a ``proc_start`` / ``proc_attach`` stream). While nobody
listens it is kept in a bounded ring per process (``RING_BYTES``, oldest bytes dropped first); the next
listener gets the ring first, then the live output. A listener that does not keep up makes the agent
stop reading the process's pipes once ``LISTENER_BACKLOG`` bytes wait for it, so a process writing
faster than the host reads blocks on its pipe instead of filling the guest's memory. After a process
exits it stays findable (its exit status and unread output) among the last ``RETAINED_EXITED`` exited
processes, so a late attach still learns how it ended.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import pwd
import signal
import subprocess
import termios
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from .accounts import Account
from .execution import _set_winsize, _take_controlling_tty
from .protocol import ErrorCode, Pipe
from .session import SessionError

if TYPE_CHECKING:
    from .connection import AgentContext

log = logging.getLogger(__name__)

# Bounds of the table (the guest's own memory, but a host must not be able to make the agent grow without
# limit either): kept here, since the agent cannot import the host's clawpot.limits.
RING_BYTES = 1 << 20  # output kept per process while nobody listens: 1 MiB
# ...and by all processes together (running and retained): a small guest (256 MiB) must not lose a
# quarter of its memory to output nobody reads. Past it, the ring being written drops its oldest bytes.
TOTAL_RING_BYTES = 16 << 20
LISTENER_BACKLOG = 1 << 20  # output waiting for one slow listener before the process is paused
MAX_RUNNING = 256  # managed processes running at once
RETAINED_EXITED = 64  # exited processes still findable (exit status, unread output)
MAX_TAG = 256  # bytes of a tag
READ_CHUNK = 64 * 1024
STDIN_BACKLOG = 1 << 20  # input queued for a process that does not read its stdin


class Listener(Protocol):
    """An attached stream (``procops.ProcAttachSession``)."""

    def deliver(self, pipe: int, data: bytes) -> None: ...
    def backlog(self) -> int: ...
    def ended(self, result: dict[str, Any]) -> None: ...


@dataclass
class Spec:
    """What a ``proc_start`` request asks for, validated."""

    argv: list[str]
    env: dict[str, str]
    cwd: str | None
    user: Account | None  # None: the agent's own user
    pty: tuple[int, int] | None
    stdin: bool
    timeout: float | None
    tag: str | None
    shown_env: dict[str, str] = field(default_factory=dict)  # the env the host asked for (for list)
    shown_cwd: str | None = None  # the cwd as asked (None: none was), as envd lists it


class RingBudget:
    """Bytes held by all rings together, and the bound on them."""

    def __init__(self, limit: int = TOTAL_RING_BYTES) -> None:
        self.limit = limit
        self.used = 0


class OutputRing:
    """The last ``capacity`` bytes of output, as (pipe, bytes) chunks; older bytes are dropped. With a
    shared ``budget`` the ring also drops its oldest bytes while all rings together hold too much."""

    def __init__(self, capacity: int = RING_BYTES, budget: RingBudget | None = None) -> None:
        self.capacity = capacity
        self.budget = budget
        self.size = 0
        self.dropped = 0
        self._chunks: deque[tuple[int, bytes]] = deque()

    def _resize(self, delta: int) -> None:
        self.size += delta
        if self.budget is not None:
            self.budget.used += delta

    def _limit(self) -> int:
        if self.budget is None:
            return self.capacity
        return min(self.capacity, max(0, self.budget.limit - (self.budget.used - self.size)))

    def append(self, pipe: int, data: bytes) -> None:
        limit = self._limit()
        if len(data) > limit:
            self.dropped += len(data) - limit
            data = data[len(data) - limit :]
        if not data:
            return
        self._chunks.append((pipe, data))
        self._resize(len(data))
        while self.size > limit:
            old_pipe, old = self._chunks[0]
            excess = self.size - limit
            if len(old) <= excess:
                self._chunks.popleft()
                self._resize(-len(old))
                self.dropped += len(old)
            else:
                self._chunks[0] = (old_pipe, old[excess:])
                self._resize(-excess)
                self.dropped += excess

    def drain(self) -> list[tuple[int, bytes]]:
        chunks = list(self._chunks)
        self._chunks.clear()
        self._resize(-self.size)
        return chunks


class ManagedProcess:
    def __init__(self, table: ProcessTable, spec: Spec) -> None:
        self.table = table
        self.spec = spec
        self.proc: subprocess.Popen[bytes] | None = None
        self.status: int | None = None
        self.timed_out = False
        self.started = time.monotonic()
        self.result: dict[str, Any] | None = None
        self.ring = OutputRing(RING_BYTES, table.ring_budget)
        self.listeners: list[Listener] = []
        self._outputs: dict[int, int] = {}  # fd -> pipe
        self._reading: set[int] = set()
        self._master: int | None = None
        self._stdin_fd: int | None = None
        self._stdin_queue: deque[tuple[memoryview, Callable[[int], None]]] = deque()
        self._stdin_queued = 0
        self._stdin_close_after: list[Callable[[], None]] = []
        self._stdin_closing = False
        self._writing = False
        self._timer: Any = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.result is None

    def info(self) -> dict[str, Any]:
        spec = self.spec
        return {
            "pid": self.pid,
            "tag": spec.tag,
            "argv": spec.argv,
            "env": spec.shown_env,
            "cwd": spec.shown_cwd,
            "pty": spec.pty is not None,
        }

    # --- start -----------------------------------------------------------------------------------------

    def spawn(self) -> None:
        spec = self.spec
        child_fds: list[int] = []
        owned: list[int] = []
        user_kwargs: dict[str, Any] = {}
        account = spec.user
        if account is not None and account.uid != os.getuid():
            user_kwargs = {
                "user": account.uid,
                "group": account.gid,
                "extra_groups": os.getgrouplist(account.name, account.gid),
            }
        try:
            if spec.pty is not None:
                master, slave = os.openpty()
                owned.append(master)
                child_fds.append(slave)
                _set_winsize(master, *spec.pty)
                self._master = master
                self._outputs[master] = Pipe.STDOUT
                if spec.stdin:
                    self._stdin_fd = master
                stdin: int = slave
                stdout = stderr = slave
            else:
                if spec.stdin:
                    r, w = os.pipe()
                    child_fds.append(r)
                    owned.append(w)
                    self._stdin_fd = w
                    stdin = r
                else:
                    stdin = subprocess.DEVNULL
                r, w = os.pipe()
                child_fds.append(w)
                owned.append(r)
                self._outputs[r] = Pipe.STDOUT
                stdout = w
                r, w = os.pipe()
                child_fds.append(w)
                owned.append(r)
                self._outputs[r] = Pipe.STDERR
                stderr = w
            self.proc = subprocess.Popen(
                spec.argv,
                stdin=stdin,
                stdout=stdout,
                stderr=stderr,
                cwd=spec.cwd,
                env=spec.env,
                start_new_session=True,  # own process group: timeout and kill reach all of it
                preexec_fn=_take_controlling_tty if spec.pty is not None else None,
                **user_kwargs,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            for fd in owned:
                os.close(fd)
            self._outputs.clear()
            self._master = self._stdin_fd = None
            detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            where = f" ({exc.filename})" if isinstance(exc, OSError) and exc.filename else ""
            raise SessionError(
                ErrorCode.SPAWN_FAILED, f"cannot execute {spec.argv[0]!r}: {detail}{where}"
            ) from None
        finally:
            for fd in child_fds:
                os.close(fd)
        for fd in owned:
            os.set_blocking(fd, False)
        tag = f" tag {spec.tag!r}" if spec.tag else ""
        log.info("proc pid %d%s: %s", self.pid, tag, " ".join(spec.argv)[:200])
        loop = self.table.ctx.loop
        if spec.timeout is not None:
            self._timer = loop.call_later(spec.timeout, self._on_timeout)
        self.table.ctx.reaper.watch(self.proc, self._on_exit)
        self.resume()

    # --- output ----------------------------------------------------------------------------------------

    def _may_read(self) -> bool:
        return all(listener.backlog() < LISTENER_BACKLOG for listener in self.listeners)

    def resume(self) -> None:
        """(Re)start reading the pipes unless a listener is backed up."""
        if not self._may_read():
            return
        for fd in self._outputs:
            if fd not in self._reading:
                self._reading.add(fd)
                self.table.ctx.loop.add_reader(fd, self._on_readable, fd)

    def _pause(self) -> None:
        for fd in list(self._reading):
            self._stop_reading(fd)

    def _stop_reading(self, fd: int) -> None:
        if fd in self._reading:
            self._reading.discard(fd)
            self.table.ctx.loop.remove_reader(fd)

    def _on_readable(self, fd: int) -> None:
        try:
            data = os.read(fd, READ_CHUNK)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno != errno.EIO:  # EIO: the PTY's slave side closed, its normal end
                log.warning("proc pid %s: read error: %s", self.proc and self.proc.pid, exc)
            data = b""
        if not data:
            self._output_closed(fd)
            return
        pipe = self._outputs[fd]
        if self.listeners:
            for listener in list(self.listeners):
                listener.deliver(pipe, data)
            if not self._may_read():
                self._pause()  # resume() once the slow listener drains
        else:
            self.ring.append(pipe, data)

    def _output_closed(self, fd: int) -> None:
        self._stop_reading(fd)
        self._outputs.pop(fd, None)
        # A PTY master stays open until the end: closing it would hang the terminal up.
        if fd != self._master:
            os.close(fd)
        self._maybe_end()

    # --- listeners -------------------------------------------------------------------------------------

    def attach(self, listener: Listener) -> None:
        """Hand the listener what the ring holds, then live output (or the end, if it is over)."""
        for pipe, data in self.ring.drain():
            listener.deliver(pipe, data)
        if self.result is not None:
            listener.ended(self.result)
            self.table.forget_exited(self)
            return
        self.listeners.append(listener)

    def detach(self, listener: Listener, unsent: list[tuple[int, bytes]] | None = None) -> None:
        """``unsent``: output the listener took but could not send (no credit): kept for the next
        listener when no other one has it (the ring is empty while someone listens)."""
        with contextlib.suppress(ValueError):
            self.listeners.remove(listener)
        if self.running:
            if not self.listeners:
                for pipe, data in unsent or ():
                    self.ring.append(pipe, data)
            self.resume()

    # --- input -----------------------------------------------------------------------------------------

    @property
    def has_stdin(self) -> bool:
        return self._stdin_fd is not None

    def write_stdin(self, data: bytes, written: Callable[[int], None]) -> None:
        """Queue ``data`` for stdin; ``written(n)`` is called as bytes reach the pipe (or are dropped)."""
        if self._stdin_fd is None or self._stdin_closing:
            raise SessionError(ErrorCode.BAD_REQUEST, "stdin not enabled or closed")
        if self._stdin_queued + len(data) > STDIN_BACKLOG:
            raise SessionError(ErrorCode.IO_ERROR, "the process does not read its stdin")
        self._stdin_queue.append((memoryview(data), written))
        self._stdin_queued += len(data)
        self._flush_stdin()

    def close_stdin(self, done: Callable[[], None]) -> None:
        """EOF on stdin once what is queued is written (a PTY gets its EOF character)."""
        if self._stdin_fd is None:
            raise SessionError(ErrorCode.BAD_REQUEST, "stdin not enabled or already closed")
        self._stdin_closing = True
        self._stdin_close_after.append(done)
        self._flush_stdin()

    def _flush_stdin(self) -> None:
        fd = self._stdin_fd
        if fd is None:
            return
        while self._stdin_queue:
            chunk, written_cb = self._stdin_queue[0]
            try:
                written = os.write(fd, chunk)
            except BlockingIOError:
                self._set_writing(True)
                return
            except OSError:  # EPIPE / EIO: the process closed its stdin
                self._stdin_gone()
                return
            self._stdin_queued -= written
            if written < len(chunk):
                self._stdin_queue[0] = (chunk[written:], written_cb)
            else:
                self._stdin_queue.popleft()
            written_cb(written)
        self._set_writing(False)
        if self._stdin_closing:
            if fd == self._master:
                with contextlib.suppress(OSError):
                    os.write(fd, termios.tcgetattr(fd)[6][termios.VEOF])
                self._stdin_fd = None
            else:
                self._stdin_gone()
            self._stdin_closed()

    def _set_writing(self, on: bool) -> None:
        if on != self._writing and self._stdin_fd is not None:
            self._writing = on
            loop = self.table.ctx.loop
            if on:
                loop.add_writer(self._stdin_fd, self._flush_stdin)
            else:
                loop.remove_writer(self._stdin_fd)

    def _stdin_gone(self) -> None:
        self._set_writing(False)
        for chunk, written_cb in self._stdin_queue:
            written_cb(len(chunk))  # dropped: the caller's credit flows on
        self._stdin_queue.clear()
        self._stdin_queued = 0
        fd, self._stdin_fd = self._stdin_fd, None
        if fd is not None and fd != self._master:
            os.close(fd)
        self._stdin_closed()

    def _stdin_closed(self) -> None:
        callbacks, self._stdin_close_after = self._stdin_close_after, []
        for done in callbacks:
            done()

    # --- control ---------------------------------------------------------------------------------------

    def _group_alive(self) -> bool:
        # Until the leader is reaped its pid pins the group id; while our pipes are open someone in the
        # group still holds them. Past both the id may be reused: never signal it then.
        return self.proc is not None and (self.status is None or bool(self._outputs))

    def signal(self, signo: int) -> None:
        if self.proc is None or not self._group_alive():
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signo)

    def resize(self, rows: int, cols: int) -> None:
        if self._master is None:
            raise SessionError(ErrorCode.BAD_REQUEST, "tty not assigned to process")
        _set_winsize(self._master, rows, cols)

    def _on_timeout(self) -> None:
        self._timer = None
        self.timed_out = True
        log.info("proc pid %s: timeout after %ss, killing its process group", self.pid, self.spec.timeout)
        self.signal(signal.SIGKILL)

    # --- end -------------------------------------------------------------------------------------------

    def _on_exit(self, status: int) -> None:
        self.status = status
        self._maybe_end()

    def _maybe_end(self) -> None:
        if self.result is not None or self.status is None or self._outputs:
            return
        status = self.status
        signaled = os.WIFSIGNALED(status)
        self.result = {
            "exit_code": None if signaled else os.WEXITSTATUS(status),
            "signal": os.WTERMSIG(status) if signaled else None,
            "timed_out": self.timed_out,
            "duration": round(time.monotonic() - self.started, 6),
        }
        log.info("proc pid %s: ended %s", self.pid, self.result)
        self._release()
        listeners, self.listeners = self.listeners, []
        for listener in listeners:
            listener.ended(self.result)
        self.table.exited(self, delivered=bool(listeners))

    def _release(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for fd in list(self._reading):
            self._stop_reading(fd)
        if self._stdin_fd is not None and self._stdin_fd != self._master:
            self._stdin_gone()
        else:
            self._set_writing(False)
            self._stdin_fd = None
            self._stdin_closed()
        for fd in list(self._outputs):
            if fd != self._master:
                os.close(fd)
        self._outputs.clear()
        if self._master is not None:
            os.close(self._master)
            self._master = None

    def kill_now(self) -> None:
        """The agent stops: kill the group (its exit is reaped as usual)."""
        self.signal(signal.SIGKILL)


class ProcessTable:
    def __init__(self, ctx: AgentContext) -> None:
        self.ctx = ctx
        self.running: dict[int, ManagedProcess] = {}
        self._exited: OrderedDict[int, ManagedProcess] = OrderedDict()
        self.ring_budget = RingBudget()

    def start(self, spec: Spec) -> ManagedProcess:
        if len(self.running) >= MAX_RUNNING:
            raise SessionError(ErrorCode.BAD_REQUEST, f"at most {MAX_RUNNING} managed processes run at once")
        managed = ManagedProcess(self, spec)
        managed.spawn()
        # A pid reused after an old process's exit: the old retained entry is stale now.
        stale = self._exited.pop(managed.pid, None)
        if stale is not None:
            stale.ring.drain()
        if spec.tag is not None:
            for pid, old in list(self._exited.items()):
                if old.spec.tag == spec.tag:
                    del self._exited[pid]
                    old.ring.drain()
        self.running[managed.pid] = managed
        return managed

    def find(self, pid: int | None, tag: str | None) -> ManagedProcess:
        """The running process with this pid or tag, else the retained exited one; SessionError if none."""
        for pool in (self.running, self._exited):
            if pid is not None and pid in pool:
                return pool[pid]
            if tag is not None:
                for managed in pool.values():
                    if managed.spec.tag == tag:
                        return managed
        what = f"pid {pid}" if pid is not None else f"tag {tag!r}"
        raise SessionError(ErrorCode.NOT_FOUND, f"process with {what} not found")

    def exited(self, managed: ManagedProcess, *, delivered: bool) -> None:
        self.running.pop(managed.pid, None)
        self._exited[managed.pid] = managed
        while len(self._exited) > RETAINED_EXITED:
            _, oldest = self._exited.popitem(last=False)
            oldest.ring.drain()  # its bytes go back to the budget
        if delivered:
            managed.ring.drain()  # its listeners had everything

    def forget_exited(self, managed: ManagedProcess) -> None:
        """A listener got the end of an exited process: its output is gone, its status stays findable."""
        managed.ring.drain()

    def kill_all(self) -> None:
        for managed in list(self.running.values()):
            managed.kill_now()


def table(ctx: AgentContext) -> ProcessTable:
    """The agent's process table (created on first use)."""
    if ctx.processes is None:
        ctx.processes = ProcessTable(ctx)
    assert isinstance(ctx.processes, ProcessTable)
    return ctx.processes


# --- request parsing -----------------------------------------------------------------------------------


def login_env(account: Account) -> dict[str, str]:
    """The environment envd gives a process: PATH of the agent, then HOME, USER and LOGNAME of the user."""
    return {
        "PATH": os.environ.get("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
        "HOME": account.home,
        "USER": account.name,
        "LOGNAME": account.name,
    }


def own_account() -> Account:
    """The agent's own user, as an account (what a request naming no user runs as)."""
    entry = pwd.getpwuid(os.getuid())
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir or "/")


def check_cwd(cwd: str) -> None:
    if not os.path.isdir(cwd):
        raise SessionError(ErrorCode.BAD_REQUEST, f"cwd '{cwd[:256]}' does not exist")
