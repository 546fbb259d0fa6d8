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
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

from clawpot.assets.errors import BuildError

_TAIL_LINES = 25
_HEARTBEAT_S = 30.0


class Step:
    """Handle of a running step: feed it the command's output lines."""

    def __init__(
        self, progress: Progress | None, task: TaskID | None, console: Console | None = None
    ) -> None:
        self._progress = progress
        self._task = task
        self._console = console  # plain mode: print a heartbeat line now and then
        self._started = self._last_update = time.monotonic()
        self._lines = 0
        self._expected: int | None = None
        # How the step ended, as printed after it ("done", "unavailable: ...").
        self.outcome = "done"

    def expect(self, lines: int | None) -> None:
        """Roughly how many output lines the step will print, for a progress estimate."""
        self._expected = lines
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, total=lines)

    def _estimate(self) -> str:
        if not self._expected:
            return ""
        return f"~{min(99, 100 * self._lines // self._expected)}% "

    def update(self, line: str) -> None:
        self._lines += 1
        now = time.monotonic()
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, completed=self._lines)
            if now - self._last_update > 0.1:  # rich redraws at ~10 Hz anyway
                self._last_update = now
                self._progress.update(self._task, detail=line.strip()[:60])
        elif self._console is not None and now - self._last_update > _HEARTBEAT_S:
            self._last_update = now
            self._console.print(
                f"    … {now - self._started:.0f} s {self._estimate()}{line.strip()[:70]}", highlight=False
            )


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
            step = Step(None, None, self.console)
            yield step
            self.console.print(
                f"  {title}: {step.outcome} in {time.monotonic() - started:.1f} s", highlight=False
            )
            return
        progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(bar_width=20),
            TimeElapsedColumn(),
            TextColumn("[dim]{task.fields[detail]}"),
            console=self.console,
            transient=True,
        )
        with progress:
            task = progress.add_task(title, total=None, detail="")
            step = Step(progress, task)
            yield step
        mark = "[green]✓[/]" if step.outcome == "done" else "[yellow]-[/]"
        outcome = "" if step.outcome == "done" else f": {step.outcome}"
        elapsed = time.monotonic() - started
        self.console.print(f"  {mark} {title}{outcome} [dim]({elapsed:.1f} s)", highlight=False)


def run_logged(
    argv: Sequence[str | Path],
    *,
    log: Path,
    step: Step,
    what: str,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    pass_fds: tuple[int, ...] = (),
) -> None:
    """Run ``argv``, appending its output to ``log``; raise BuildError with the log's tail if it fails.

    ``pass_fds``: descriptors the command inherits (a build's lock, so the build counts as alive for as
    long as any of its processes runs, even if this one is killed).
    """
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
            pass_fds=pass_fds,
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
