"""Boot recipes: an ordered list of named steps, each with its undo, run by one small runner.

A backend's start reads as its recipe (``firecracker.boot.FIRECRACKER_BOOT``, ``qemu.boot.QEMU_BOOT``)::

    Recipe([Step("write the configuration", write_config),
            Step("spawn firecracker", spawn, undo=kill), ...])

``Recipe.run(context)`` runs the steps in order. Each step's name is logged at debug level with how
long it took, so a boot log shows the sequence. A step that succeeded pushes its undo onto a
``Cleanup`` stack; when a later step fails, or the start is cancelled, the stack runs once, in reverse,
and the error goes on up. A step that fails undoes its own half-done work: only finished steps are
undone.

Variants edit a copy, as firecracker-go-sdk's handler lists do: a recipe is immutable and
``replace``, ``insert_before``, ``insert_after`` and ``remove`` return a new one. Running Firecracker
under the jailer is one ``replace`` of the launch step plus one ``insert_before`` of a step that
prepares the jail (tests/unit/vmm/firecracker/test_fc_recipe.py does exactly that with a stand-in).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

C = TypeVar("C")

Undo = Callable[[], Awaitable[None]]
# Turns a step's failure into the error the caller sees (its own words for it), before anything is
# undone: the process that failed is still there to be asked why.
Explain = Callable[[str, Exception], Awaitable[BaseException]]


@dataclass(frozen=True)
class Step(Generic[C]):
    """One named step of a recipe over a context ``C`` (the VMM handle being started).

    ``run`` does the work; ``undo``, when given, takes it back and is pushed once ``run`` succeeded.
    """

    name: str
    run: Callable[[C], Awaitable[None]]
    undo: Callable[[C], Awaitable[None]] | None = None


class RecipeError(ValueError):
    """A recipe edit names a step that is not there, or would make two steps share a name."""


class Recipe(Generic[C]):
    """An ordered, immutable list of uniquely named steps; edits return a new recipe."""

    def __init__(self, steps: Iterable[Step[C]]) -> None:
        self.steps: tuple[Step[C], ...] = tuple(steps)
        names = [step.name for step in self.steps]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise RecipeError(f"step names must be unique: {', '.join(map(repr, duplicates))}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(step.name for step in self.steps)

    def __iter__(self) -> Iterator[Step[C]]:
        return iter(self.steps)

    def __len__(self) -> int:
        return len(self.steps)

    def __contains__(self, name: object) -> bool:
        return name in self.names

    def __getitem__(self, name: str) -> Step[C]:
        return self.steps[self._index(name)]

    def __repr__(self) -> str:
        return f"Recipe({' → '.join(self.names)})"

    # -- edits (each returns a new recipe) -----------------------------------------------------------

    def replace(self, name: str, step: Step[C]) -> Recipe[C]:
        """Swap the step called ``name`` for ``step`` (which may have another name)."""
        index = self._index(name)
        return Recipe([*self.steps[:index], step, *self.steps[index + 1 :]])

    def insert_before(self, name: str, *steps: Step[C]) -> Recipe[C]:
        index = self._index(name)
        return Recipe([*self.steps[:index], *steps, *self.steps[index:]])

    def insert_after(self, name: str, *steps: Step[C]) -> Recipe[C]:
        index = self._index(name) + 1
        return Recipe([*self.steps[:index], *steps, *self.steps[index:]])

    def append(self, *steps: Step[C]) -> Recipe[C]:
        return Recipe([*self.steps, *steps])

    def remove(self, name: str) -> Recipe[C]:
        index = self._index(name)
        return Recipe([*self.steps[:index], *self.steps[index + 1 :]])

    def _index(self, name: str) -> int:
        for index, step in enumerate(self.steps):
            if step.name == name:
                return index
        raise RecipeError(f"no step {name!r} in {self!r}")

    # -- running -------------------------------------------------------------------------------------

    async def run(self, context: C, *, label: str = "", explain: Explain | None = None) -> Cleanup:
        """Run every step on ``context``; returns the stack of undos of a start that succeeded (the
        caller may keep it, or drop it when stopping has its own way to take things back).

        On a failure (or cancellation) the stack runs before the error goes on; ``explain`` may first
        turn an ``Exception`` into the error to raise. ``label`` prefixes the log lines (the VM).
        """
        cleanup = Cleanup(label)
        step: Step[C] | None = None
        began = time.perf_counter()
        try:
            for step in self.steps:
                began = time.perf_counter()
                await step.run(context)
                _log_step(label, step.name, began, "")
                if step.undo is not None:
                    cleanup.push(step.name, _bound(step.undo, context))
        except BaseException as exc:
            name = step.name if step is not None else "start"
            _log_step(label, name, began, f" failed: {_describe(exc)}")
            error: BaseException = exc
            try:
                if explain is not None and isinstance(exc, Exception):
                    error = await explain(name, exc)
            finally:
                await cleanup.run()
            if error is exc:
                raise
            raise error from exc
        return cleanup


class Cleanup:
    """A stack of named undos that runs once, in reverse; a failing undo is logged and the rest still
    run. Running is shielded: a caller cancelled meanwhile does not leave half the undos unrun."""

    def __init__(self, label: str = "") -> None:
        self.label = label
        self._undos: list[tuple[str, Undo]] = []
        self._running: asyncio.Future[None] | None = None

    @property
    def names(self) -> tuple[str, ...]:
        """The steps whose undos are pending, in the order they will run."""
        return tuple(name for name, _ in reversed(self._undos))

    def push(self, name: str, undo: Undo) -> None:
        if self._running is not None:
            raise RuntimeError("this cleanup already ran")
        self._undos.append((name, undo))

    async def run(self) -> None:
        if self._running is None:
            self._running = asyncio.ensure_future(self._run_all())
        await asyncio.shield(self._running)

    async def _run_all(self) -> None:
        while self._undos:
            name, undo = self._undos.pop()
            began = time.perf_counter()
            try:
                await undo()
            except Exception:
                log.exception("%sundo of %r failed", _prefix(self.label), name)
            else:
                _log_step(self.label, f"undo {name}", began, "")


def _bound(undo: Callable[[C], Awaitable[None]], context: C) -> Undo:
    async def run() -> None:
        await undo(context)

    return run


def _log_step(label: str, name: str, began: float, outcome: str) -> None:
    if log.isEnabledFor(logging.DEBUG):
        seconds = time.perf_counter() - began
        log.debug(
            "%s%s (%.1f ms)%s",
            _prefix(label),
            name,
            seconds * 1000,
            outcome,
            extra={"step": name, "step_seconds": seconds},
        )


def _prefix(label: str) -> str:
    return f"{label}: " if label else ""


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
