"""The ``exec`` operation: run one process (in its own process group) and stream its pipes.

Request: ``argv`` (list) or ``command`` (string for ``/bin/sh -c``), optional ``env``, ``clear_env``,
``cwd``, ``timeout`` (seconds), ``pty`` ({rows, cols}), ``stdin`` (false: /dev/null), ``window``.
Replies: INFO {pid}, DATA/EOF on STDOUT and STDERR (a PTY merges both into STDOUT), then END
{exit_code, signal, timed_out, duration} once the process has exited and its output pipes are closed.
A program that cannot be executed ends like a shell's: exit 127 (not found) or 126 (not executable),
``clawpot: NAME: REASON`` on stderr and ``pid`` null. Other spawn failures (a bad ``cwd``) are errors.

Output is read only while the host has granted credit and the link is not backed up, so a fast writer
blocks on its pipe instead of filling the agent's memory. The timeout, a CANCEL, and the loss of the
connection kill the whole process group.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import signal
import struct
import subprocess
import termios
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from .outframes import READ_FRAMES
from .protocol import MAX_PAYLOAD, ErrorCode, FrameType, Pipe, encode_json
from .session import Session, SessionError, opt_bool, opt_str

if TYPE_CHECKING:
    import asyncio

    from .connection import Connection

log = logging.getLogger(__name__)

_VALID_SIGNALS = frozenset(int(s) for s in signal.valid_signals())
_MAX_TIMEOUT = 10.0 * 365 * 24 * 3600
_READ_CHUNK = READ_FRAMES * MAX_PAYLOAD


def _take_controlling_tty() -> None:
    # Runs in the child between fork and exec, after setsid(): make the PTY slave (fd 0) our terminal.
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _set_winsize(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _parse_argv(req: dict[str, Any]) -> list[str]:
    argv, command = req.get("argv"), req.get("command")
    if (argv is None) == (command is None):
        raise SessionError(ErrorCode.BAD_REQUEST, "exactly one of 'argv' and 'command' is required")
    if command is not None:
        if not isinstance(command, str) or not command or "\0" in command:
            raise SessionError(ErrorCode.BAD_REQUEST, "'command' must be a non-empty string")
        return ["/bin/sh", "-c", command]
    if (
        not isinstance(argv, list)
        or not argv
        or not all(isinstance(a, str) and "\0" not in a for a in argv)
        or not argv[0]
    ):
        raise SessionError(ErrorCode.BAD_REQUEST, "'argv' must be a non-empty list of strings")
    return argv


def _parse_env(req: dict[str, Any]) -> dict[str, str]:
    extra = req.get("env") or {}
    if not isinstance(extra, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and k and "=" not in k and "\0" not in k + v
        for k, v in extra.items()
    ):
        raise SessionError(ErrorCode.BAD_REQUEST, "'env' must map variable names to strings")
    env = {} if opt_bool(req, "clear_env", False) else dict(os.environ)
    env.update(extra)
    return env


def _parse_pty(req: dict[str, Any]) -> tuple[int, int] | None:
    pty = req.get("pty")
    if pty is None or pty is False:
        return None
    if pty is True:
        return 24, 80
    if not isinstance(pty, dict):
        raise SessionError(ErrorCode.BAD_REQUEST, "'pty' must be an object {rows, cols}")
    rows, cols = pty.get("rows", 24), pty.get("cols", 80)
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 < v < 65536 for v in (rows, cols)):
        raise SessionError(ErrorCode.BAD_REQUEST, "pty rows and cols must be integers in [1, 65535]")
    return rows, cols


def _parse_timeout(req: dict[str, Any]) -> float | None:
    timeout = req.get("timeout")
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= _MAX_TIMEOUT:
        raise SessionError(ErrorCode.BAD_REQUEST, "'timeout' must be a positive number of seconds")
    return float(timeout)


class ExecSession(Session):
    op = "exec"

    def __init__(self, conn: Connection, stream_id: int, req: dict[str, Any]) -> None:
        super().__init__(conn, stream_id, req)
        self.argv = _parse_argv(req)
        self.env = _parse_env(req)
        self.cwd = opt_str(req, "cwd")
        self.timeout = _parse_timeout(req)
        self.pty = _parse_pty(req)
        if self.pty is not None:
            self.env.setdefault("TERM", "xterm")
        self.want_stdin = opt_bool(req, "stdin", True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.status: int | None = None
        self.timed_out = False
        self._started = time.monotonic()
        self._outputs: dict[int, Pipe] = {}  # open output fds
        self._reading: set[int] = set()
        self._stdin_fd: int | None = None
        self._stdin_queue: deque[memoryview] = deque()
        self._stdin_eof = False
        self._writing = False
        self._timer: asyncio.TimerHandle | None = None
        self._owned_fds: set[int] = set()
        self._master: int | None = None

    # --- start -----------------------------------------------------------------------------------------

    def start(self) -> None:
        child_fds: list[int] = []
        try:
            self.proc = self._spawn(child_fds)
        except (OSError, subprocess.SubprocessError) as exc:
            self._close_owned()
            if isinstance(exc, OSError) and exc.filename == self.argv[0]:
                # execve() itself failed (subprocess names the program only then; a bad cwd names the
                # directory): the program is missing or cannot run, which a shell reports as an exit.
                self._exec_failed(exc)
                return
            detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            where = f" ({exc.filename})" if isinstance(exc, OSError) and exc.filename else ""
            message = f"cannot execute {self.argv[0]!r}: {detail}{where}"
            raise SessionError(ErrorCode.SPAWN_FAILED, message) from None
        finally:
            for fd in child_fds:
                os.close(fd)
        pid = self.proc.pid
        log.info("exec pid %d: %s", pid, " ".join(self.argv)[:200])
        for fd in self._owned_fds:
            os.set_blocking(fd, False)
        self.send(FrameType.INFO, encode_json({"pid": pid}))
        if self.timeout is not None:
            self._timer = self.loop.call_later(self.timeout, self._on_timeout)
        self.conn.ctx.reaper.watch(self.proc, self._on_exit)
        self._resume_reading()

    def _exec_failed(self, exc: OSError) -> None:
        """Finish as a shell does when it cannot run a program: 127 if it does not exist, 126 if it
        exists but cannot be executed, with one line on stderr. No process was started (pid null)."""
        name = self.argv[0]
        if exc.errno == errno.ENOENT:
            code = 127
            # Like sh: a bare name was looked up in PATH; a path names one file.
            reason = "command not found" if "/" not in name else "No such file or directory"
        else:
            code = 126
            reason = exc.strerror or str(exc)
        newline = "\r\n" if self.pty is not None else "\n"  # a terminal shows "\n" as CR LF
        line = f"clawpot: {name[:200]}: {reason}{newline}".encode(errors="replace")
        log.info("exec %r: %s (exit %d)", name[:200], reason, code)
        self.send(FrameType.INFO, encode_json({"pid": None}))
        # The line fits any window the host can open with (at least 1 byte): cut to what it granted.
        line = line[: self.send_window]
        self.send_window -= len(line)
        pipe = Pipe.STDOUT if self.pty is not None else Pipe.STDERR  # a PTY merges both into STDOUT
        self.send_data(line, pipe)
        for each in dict.fromkeys((Pipe.STDOUT, pipe)):
            self.send(FrameType.EOF, flags=each)
        self.finish(
            {
                "exit_code": code,
                "signal": None,
                "timed_out": False,
                "duration": round(time.monotonic() - self._started, 6),
            }
        )

    def _own(self, fd: int) -> int:
        self._owned_fds.add(fd)
        return fd

    def _spawn(self, child_fds: list[int]) -> subprocess.Popen[bytes]:
        stdin: int
        if self.pty is not None:
            master, slave = os.openpty()
            self._master = self._own(master)
            child_fds.append(slave)
            _set_winsize(master, *self.pty)
            self._outputs[master] = Pipe.STDOUT
            if self.want_stdin:
                self._stdin_fd = master
            stdin = stdout = stderr = slave
        else:
            if self.want_stdin:
                r, w = os.pipe()
                child_fds.append(r)
                self._stdin_fd = self._own(w)
                stdin = r
            else:
                stdin = subprocess.DEVNULL
            r, w = os.pipe()
            child_fds.append(w)
            self._outputs[self._own(r)] = Pipe.STDOUT
            stdout = w
            r, w = os.pipe()
            child_fds.append(w)
            self._outputs[self._own(r)] = Pipe.STDERR
            stderr = w
            for fd in self._outputs:
                # Fewer, larger reads: a fast writer wakes the agent once per 256 KiB, not per 64 KiB.
                with contextlib.suppress(OSError):
                    fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _READ_CHUNK)
        return subprocess.Popen(
            self.argv,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            cwd=self.cwd,
            env=self.env,
            start_new_session=True,  # own process group: timeout and disconnect kill all of it
            preexec_fn=_take_controlling_tty if self.pty is not None else None,
        )

    # --- output ----------------------------------------------------------------------------------------

    def _resume_reading(self) -> None:
        if self.done or self.send_window <= 0 or self.conn.writing_paused:
            return
        for fd in self._outputs:
            if fd not in self._reading:
                self._reading.add(fd)
                self.loop.add_reader(fd, self._on_readable, fd)

    def _stop_reading(self, fd: int) -> None:
        if fd in self._reading:
            self._reading.discard(fd)
            self.loop.remove_reader(fd)

    def _on_readable(self, fd: int) -> None:
        if self.done:
            return
        if self.send_window <= 0 or self.conn.writing_paused:
            self._stop_reading(fd)  # resumed by on_window / on_writable
            return
        try:
            # Straight from the pipe into DATA frames on the link (outframes.py): no copy in Python.
            sent = self.send_from(fd, self._outputs[fd], min(_READ_CHUNK, self.send_window))
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno != errno.EIO:  # EIO: PTY slave closed, the normal end of a PTY session
                log.warning("exec pid %s: read error: %s", self.pid, exc)
            sent = 0
        if not sent:
            self._output_closed(fd)
            return
        self.send_window -= sent

    def _output_closed(self, fd: int) -> None:
        self._stop_reading(fd)
        pipe = self._outputs.pop(fd)
        # A PTY master stays open until the session ends: closing it hangs the terminal up, which
        # would SIGHUP a process that has closed its output but not yet exited.
        if fd != self._master:
            self._close_fd(fd)
        self.send(FrameType.EOF, flags=pipe)
        self._maybe_finish()

    def on_window(self) -> None:
        self._resume_reading()

    def on_writable(self) -> None:
        self._resume_reading()

    # --- input -----------------------------------------------------------------------------------------

    def on_data(self, pipe: int, data: bytes) -> None:
        if pipe != Pipe.STDIN:
            raise SessionError(ErrorCode.BAD_REQUEST, "exec sessions take DATA on stdin only")
        if self._stdin_eof:
            raise SessionError(ErrorCode.BAD_REQUEST, "DATA on stdin after its EOF")
        if self._stdin_fd is None:  # no stdin, or the process closed it: drop the bytes, keep credit flowing
            self.grant(len(data), flush=True)
            return
        self._stdin_queue.append(memoryview(data))
        self._flush_stdin()

    def on_eof(self, pipe: int) -> None:
        if pipe != Pipe.STDIN:
            raise SessionError(ErrorCode.BAD_REQUEST, "exec sessions take EOF on stdin only")
        self._stdin_eof = True
        self._flush_stdin()

    def _flush_stdin(self) -> None:
        fd = self._stdin_fd
        if fd is None or self.done:
            return
        while self._stdin_queue:
            chunk = self._stdin_queue[0]
            try:
                written = os.write(fd, chunk)
            except BlockingIOError:
                self._set_writing(True)
                return
            except OSError:  # EPIPE / EIO: the process closed its stdin
                self._stdin_gone()
                return
            if written < len(chunk):
                self._stdin_queue[0] = chunk[written:]
            else:
                self._stdin_queue.popleft()
            self.grant(written, flush=not self._stdin_queue)
        self._set_writing(False)
        if self._stdin_eof:
            if self.pty is not None:
                # A terminal has no half-close: send the EOF character (ends a read at line start).
                with contextlib.suppress(OSError):
                    os.write(fd, termios.tcgetattr(fd)[6][termios.VEOF])
                self._stdin_fd = None
            else:
                self._stdin_gone()

    def _set_writing(self, on: bool) -> None:
        if on != self._writing and self._stdin_fd is not None:
            self._writing = on
            if on:
                self.loop.add_writer(self._stdin_fd, self._flush_stdin)
            else:
                self.loop.remove_writer(self._stdin_fd)

    def _stdin_gone(self) -> None:
        self._set_writing(False)
        dropped = sum(len(c) for c in self._stdin_queue)
        self._stdin_queue.clear()
        self.grant(dropped, flush=True)
        fd, self._stdin_fd = self._stdin_fd, None
        if fd is not None and fd != self._master:
            self._close_fd(fd)

    # --- control ---------------------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def _group_alive(self) -> bool:
        # Until the leader is reaped its pid pins the group id; while our pipes are open someone in the
        # group still holds them. Past both, the id may be reused, so never signal it.
        return self.proc is not None and (self.status is None or bool(self._outputs))

    def _kill(self, signo: int, group: bool = True) -> None:
        if self.proc is None or not self._group_alive():
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group:
                os.killpg(self.proc.pid, signo)
            elif self.status is None:
                os.kill(self.proc.pid, signo)

    def on_signal(self, signo: int, group: bool) -> None:
        if signo not in _VALID_SIGNALS:
            raise SessionError(ErrorCode.BAD_REQUEST, f"invalid signal number {signo}")
        self._kill(signo, group)

    def on_resize(self, rows: int, cols: int) -> None:
        if self.pty is None:
            self.conn.send_error(0, ErrorCode.NOT_SUPPORTED, f"stream {self.id}: no pty to resize")
            return
        if rows == 0 or cols == 0:
            raise SessionError(ErrorCode.BAD_REQUEST, "rows and cols must be positive")
        if self._master is not None and self._master in self._owned_fds:
            _set_winsize(self._master, rows, cols)  # the kernel sends SIGWINCH to the foreground group

    def on_cancel(self) -> None:
        # The END that follows reports the kill; the host gets its answer either way.
        self._kill(signal.SIGKILL)

    def _on_timeout(self) -> None:
        self._timer = None
        self.timed_out = True
        log.info("exec pid %s: timeout after %ss, killing its process group", self.pid, self.timeout)
        self._kill(signal.SIGKILL)

    # --- end -------------------------------------------------------------------------------------------

    def _on_exit(self, status: int) -> None:
        self.status = status
        log.info("exec pid %s: %s", self.pid, self._describe_status(status))
        self._maybe_finish()

    @staticmethod
    def _describe_status(status: int) -> str:
        if os.WIFSIGNALED(status):
            return f"killed by signal {os.WTERMSIG(status)}"
        return f"exit code {os.waitstatus_to_exitcode(status)}"

    def _maybe_finish(self) -> None:
        if self.done or self.status is None or self._outputs:
            return
        status = self.status
        signaled = os.WIFSIGNALED(status)
        self.finish(
            {
                "exit_code": None if signaled else os.WEXITSTATUS(status),
                "signal": os.WTERMSIG(status) if signaled else None,
                "timed_out": self.timed_out,
                "duration": round(time.monotonic() - self._started, 6),
            }
        )

    def cleanup(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._kill(signal.SIGKILL)  # no-op after a natural end; kills the group on fail/abort
        for fd in list(self._reading):
            self._stop_reading(fd)
        self._set_writing(False)
        self._stdin_queue.clear()
        self._close_owned()
        # The reaper keeps watching the pid: the child is reaped whenever it finally exits.

    def _close_fd(self, fd: int) -> None:
        if fd in self._owned_fds:
            self._owned_fds.discard(fd)
            os.close(fd)

    def _close_owned(self) -> None:
        for fd in list(self._owned_fds):
            self._close_fd(fd)
        self._outputs.clear()
        self._stdin_fd = None
