"""Show long build steps as they run, and run build commands with their output going to a log.

On a terminal a step is a live spinner with its elapsed time and the command's latest output line;
elsewhere (CI logs) a step prints one line when it starts and one when it ends, with its duration.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

from clawpot.assets.errors import BuildError

_TAIL_LINES = 25


class Step:
    def __init__(self, progress: Progress | None, task: TaskID | None) -> None:
        self._progress = progress
        self._task = task
        self._last_update = 0.0

    def update(self, line: str) -> None:
        if self._progress is None or self._task is None:
            return
        now = time.monotonic()
        if now - self._last_update > 0.1:  # rich redraws at ~10 Hz anyway
            self._last_update = now
            self._progress.update(self._task, detail=line.strip()[:70])


class Reporter:
    def __init__(self, console: Console | None = None, quiet: bool = False) -> None:
        self.console = console or Console(stderr=True)
        self.quiet = quiet

    def info(self, message: str) -> None:
        if not self.quiet:
            self.console.print(message, highlight=False)

    @contextlib.contextmanager
    def step(self, title: str) -> Iterator[Step]:
        started = time.monotonic()
        if self.quiet:
            yield Step(None, None)
            return
        if not self.console.is_terminal:
            self.console.print(f"  {title} ...", highlight=False)
            yield Step(None, None)
            self.console.print(f"  {title}: done in {time.monotonic() - started:.1f} s", highlight=False)
            return
        progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            TextColumn("[dim]{task.fields[detail]}"),
            console=self.console,
            transient=True,
        )
        with progress:
            task = progress.add_task(title, total=None, detail="")
            yield Step(progress, task)
        self.console.print(
            f"  [green]✓[/] {title} [dim]({time.monotonic() - started:.1f} s)", highlight=False
        )


def run_logged(
    argv: Sequence[str | Path],
    *,
    log: Path,
    step: Step,
    what: str,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> None:
    """Run ``argv``, appending its output to ``log``; raise BuildError with the log's tail if it fails."""
    log.parent.mkdir(parents=True, exist_ok=True)
    tail: deque[str] = deque(maxlen=_TAIL_LINES)
    with open(log, "a", encoding="utf-8", errors="replace") as logf:
        logf.write(f"$ {' '.join(str(a) for a in argv)}\n")
        logf.flush()
        # Own session, so an interrupt can stop the whole command tree (make's children) and only it.
        proc = subprocess.Popen(
            [str(a) for a in argv],
            cwd=cwd,
            env=None if env is None else dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,
        )
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                logf.write(line)
                tail.append(line)
                step.update(line)
            code = proc.wait()
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            proc.wait()
            raise
    if code != 0:
        raise BuildError(f"{what} failed (exit {code}); log: {log}", log=log, tail="".join(tail))
