"""Reap the agent's child processes from SIGCHLD, without threads.

Each spawned child is registered with a callback. On SIGCHLD every registered pid is polled with
``waitpid(pid, WNOHANG)``; when the agent is PID 1 (the guest's init found no tini) orphans are
re-parented to it, so it reaps any child instead. The ``Popen`` object is kept until its child is reaped
so that its destructor never waits on (and steals) a status we are about to collect.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
from collections.abc import Callable

log = logging.getLogger(__name__)

ExitCallback = Callable[[int], None]  # receives the raw wait status


class Reaper:
    def __init__(self, loop: asyncio.AbstractEventLoop, *, adopt_orphans: bool | None = None) -> None:
        self._children: dict[int, tuple[subprocess.Popen[bytes], ExitCallback]] = {}
        self._adopt_orphans = os.getpid() == 1 if adopt_orphans is None else adopt_orphans
        self._loop = loop
        loop.add_signal_handler(signal.SIGCHLD, self.reap)

    def close(self) -> None:
        self._loop.remove_signal_handler(signal.SIGCHLD)

    def watch(self, proc: subprocess.Popen[bytes], on_exit: ExitCallback) -> None:
        self._children[proc.pid] = (proc, on_exit)
        self.reap()  # the child may have exited before we registered it

    @property
    def live(self) -> list[int]:
        return list(self._children)

    def reap(self) -> None:
        if self._adopt_orphans:
            while True:
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    return
                if pid == 0:
                    return
                self._exited(pid, status)
        for pid in list(self._children):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
                log.warning("child %d was reaped elsewhere", pid)
            if done:
                self._exited(pid, status)

    def _exited(self, pid: int, status: int) -> None:
        entry = self._children.pop(pid, None)
        if entry is None:
            return  # an orphan we adopted as PID 1
        proc, on_exit = entry
        proc.returncode = os.waitstatus_to_exitcode(status)
        try:
            on_exit(status)
        except Exception:
            log.exception("exit callback for pid %d failed", pid)
