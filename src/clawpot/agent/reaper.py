"""Reap the agent's child processes from SIGCHLD, without threads.

Each spawned child is registered with a callback; on SIGCHLD every registered pid is polled with
``waitpid(pid, WNOHANG)``. The ``Popen`` object is kept until its child is reaped so that its
destructor never waits on (and steals) a status we are about to collect.
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
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._children: dict[int, tuple[subprocess.Popen[bytes], ExitCallback]] = {}
        loop.add_signal_handler(signal.SIGCHLD, self.reap)
        self._loop = loop

    def close(self) -> None:
        self._loop.remove_signal_handler(signal.SIGCHLD)

    def watch(self, proc: subprocess.Popen[bytes], on_exit: ExitCallback) -> None:
        self._children[proc.pid] = (proc, on_exit)
        self.reap()  # the child may have exited before we registered it

    @property
    def live(self) -> list[int]:
        return list(self._children)

    def reap(self) -> None:
        for pid in list(self._children):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
                log.warning("child %d was reaped elsewhere", pid)
            if done == 0:
                continue
            proc, on_exit = self._children.pop(pid)
            proc.returncode = os.waitstatus_to_exitcode(status) if status else 0
            try:
                on_exit(status)
            except Exception:
                log.exception("exit callback for pid %d failed", pid)
