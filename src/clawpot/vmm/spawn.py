"""Spawning a VMM process, the same way for every backend: ``spawn()`` → a ``VmmChild``.

- Plain ``subprocess.Popen``, not asyncio's subprocess machinery: that starts a waiter thread per child
  (~1 ms of every VM start) and its child watcher would race us to reap.
- Its own session: a Ctrl+C at the terminal reaches our cleanup, which stops the VM in order; the VMM
  does not get the SIGINT directly.
- Optionally the parent-death signal (``die_with_parent``): one-VM launchers (the driver, tests) leave
  no orphan behind. The server does not set it: its VMs outlive a restart and are adopted.
- Its exit is watched through a pidfd registered with the event loop: readable the moment the VMM exits,
  whatever the reason (guest poweroff, crash, ``kill -9`` from outside). The child is reaped then, in
  the same callback, and the backend's ``on_exit`` turns the exit code into an ``ExitInfo`` at once.
  Holding the pidfd until then means signals reach our VMM, never a recycled PID.
- A VMM started by a launcher that exits once it has handed over (Firecracker's jailer with
  ``--new-pid-ns`` forks firecracker and exits) is watched the same way with ``VmmChild.of_pid``: the
  launching process is a child subreaper (``become_subreaper``), so the orphaned VMM is reparented to
  it, and its exit is reaped and explained here exactly like a direct child's.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import logging
import os
import signal
import subprocess
from collections.abc import Callable, Sequence
from typing import IO

from clawpot.vmm.base import ExitInfo, VmmStartError

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36

# Turns the reaped child's exit code (negative: killed by that signal) into how the VMM ended. Called
# once, synchronously, the moment the child is reaped.
OnExit = Callable[[int], ExitInfo]


def die_with_parent() -> Callable[[], None]:
    """A preexec hook: the kernel SIGKILLs the VMM if its parent dies without stopping it (no orphans).

    libc is resolved here, before fork, so the child makes one plain syscall. A preexec hook makes
    Python fork() instead of vfork(), which costs a few ms (bench/firecracker_start.py shows it).
    """
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)

    return hook


def become_subreaper() -> None:
    """Make this process a child subreaper: orphaned descendants (a jailed firecracker whose jailer
    exited) are reparented to it, so it can reap them and learn how they ended. Idempotent."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise VmmStartError(f"cannot become a child subreaper: {os.strerror(ctypes.get_errno())}")


def popen(
    argv: Sequence[str],
    *,
    stdout: int | IO[bytes],
    stderr: int | IO[bytes],
    die_with_parent: bool,
    pass_fds: Sequence[int] = (),
    cwd: str | None = None,
) -> subprocess.Popen[bytes]:
    """The process of ``spawn``, unwatched (a launcher such as the jailer, waited for by its caller)."""
    try:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
            preexec_fn=_parent_death_hook() if die_with_parent else None,
            pass_fds=tuple(pass_fds),
            cwd=cwd,
        )
    except OSError as exc:
        raise VmmStartError(f"cannot run {argv[0]}: {exc.strerror or exc}") from exc


def spawn(
    argv: Sequence[str],
    *,
    stdout: int | IO[bytes],
    stderr: int | IO[bytes],
    on_exit: OnExit,
    die_with_parent: bool,
    what: str | None = None,
    pass_fds: Sequence[int] = (),
    cwd: str | None = None,
) -> VmmChild:
    """Start ``argv`` as a VMM child. Its output goes to ``stdout`` / ``stderr`` (the caller closes its
    own copies afterwards). Raises ``VmmStartError`` ("cannot run ...") when it cannot be executed.
    ``pass_fds`` stay open in the child under the same numbers; ``cwd`` is its working directory.

    Must be called from the event loop that will watch the child.
    """
    loop = asyncio.get_running_loop()
    child = popen(
        argv,
        stdout=stdout,
        stderr=stderr,
        die_with_parent=die_with_parent,
        pass_fds=pass_fds,
        cwd=cwd,
    )
    return VmmChild(child.pid, child.poll, on_exit, loop, what or os.path.basename(argv[0]))


# ``spawn``'s flag of the same name hides the function inside it.
_parent_death_hook = die_with_parent


class VmmChild:
    """A VMM process we spawned: signal it, wait for it, and know how it ended once it is reaped."""

    def __init__(
        self,
        pid: int,
        poll: Callable[[], int | None],
        on_exit: OnExit,
        loop: asyncio.AbstractEventLoop,
        what: str,
    ) -> None:
        """``poll`` reaps the child if it exited: its return code (negative: killed by that signal),
        else None."""
        self._pid = pid
        self._poll = poll
        self.what = what
        self._on_exit = on_exit
        self._loop = loop
        self._exited: asyncio.Future[ExitInfo] = loop.create_future()
        self._exit_info: ExitInfo | None = None
        self._pidfd: int | None = None
        try:
            self._pidfd = os.pidfd_open(pid)
        except OSError:  # kernels before 5.3: a thread waits instead
            # Waits without reaping: ``_reaped`` reaps through ``poll``, as it does on a pidfd.
            wait = asyncio.to_thread(os.waitid, os.P_PID, pid, os.WEXITED | os.WNOWAIT)
            self._waiter = asyncio.ensure_future(wait)
            self._waiter.add_done_callback(lambda _: self._reaped())
        else:
            loop.add_reader(self._pidfd, self._reaped)

    @classmethod
    def of_pid(cls, pid: int, on_exit: OnExit, what: str) -> VmmChild:
        """A child of ours we did not fork ourselves (reparented to this subreaper): watched and reaped
        like one we did. Must be called from the event loop that will watch it."""
        return cls(pid, functools.partial(_reap, pid), on_exit, asyncio.get_running_loop(), what)

    @property
    def pid(self) -> int:
        return self._pid

    @property
    def exit_info(self) -> ExitInfo | None:
        return self._exit_info

    @property
    def running(self) -> bool:
        return self._exit_info is None

    def send_signal(self, signum: int) -> None:
        """Signal the VMM unless it is already reaped (then there is nothing left to signal)."""
        if self._exit_info is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            if self._pidfd is not None:
                signal.pidfd_send_signal(self._pidfd, signum)
            else:
                os.kill(self._pid, signum)

    async def wait(self) -> ExitInfo:
        """How the process ended, once it is reaped."""
        # Shielded: a cancelled waiter must not cancel the exit that other waiters share.
        return await asyncio.shield(self._exited)

    async def wait_at_most(self, seconds: float | None) -> ExitInfo | None:
        """The exit info, or None if the process still runs after ``seconds``."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                return await self.wait()
        return None

    async def terminate(self, term_seconds: float) -> ExitInfo:
        """SIGTERM, then SIGKILL after ``term_seconds`` (at once when 0); returns once reaped."""
        if self._exit_info is None and term_seconds > 0:
            log.debug("sending SIGTERM to %s pid %s", self.what, self.pid)
            self.send_signal(signal.SIGTERM)
            await self.wait_at_most(term_seconds)
        if self._exit_info is None:
            log.debug("sending SIGKILL to %s pid %s", self.what, self.pid)
            self.send_signal(signal.SIGKILL)
        return await self.wait()

    def _reaped(self) -> None:
        returncode = self._poll()
        if returncode is None or self._exit_info is not None:
            return  # readable without an exit should not happen; stay registered
        if self._pidfd is not None:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        try:
            info = self._on_exit(returncode)
        except Exception:  # a broken explanation must not leave every waiter hanging
            log.exception("explaining the exit of %s pid %s failed", self.what, self.pid)
            info = ExitInfo(
                returncode if returncode >= 0 else None,
                -returncode if returncode < 0 else None,
                f"{self.what} exited ({returncode})",
            )
        self._exit_info = info
        log.debug("%s pid %s exited: %s", self.what, self.pid, info.reason)
        if not self._exited.done():
            self._exited.set_result(info)


def _reap(pid: int) -> int | None:
    """``Popen.poll`` for a child we did not fork: its return code once reaped, else None."""
    try:
        reaped, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # reaped by someone else: nothing left to learn
        return -signal.SIGKILL
    if reaped == 0:
        return None
    return os.waitstatus_to_exitcode(status)
