"""The boot-recipe runner (clawpot.vmm.steps): order, undo stack, explain, cancellation, edits."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import pytest

from clawpot.vmm.steps import Cleanup, Recipe, RecipeError, Step


@dataclass
class Journal:
    """The context the test recipes run on: what happened, in order."""

    events: list[str] = field(default_factory=list)


def step(name: str, *, undo: bool = True, fail: BaseException | None = None) -> Step[Journal]:
    async def run(journal: Journal) -> None:
        journal.events.append(f"run {name}")
        if fail is not None:
            raise fail

    async def take_back(journal: Journal) -> None:
        journal.events.append(f"undo {name}")

    return Step(name, run, take_back if undo else None)


ABC = Recipe([step("a"), step("b", undo=False), step("c")])


async def test_steps_run_in_order_and_log_their_names_with_durations(
    caplog: pytest.LogCaptureFixture,
) -> None:
    journal = Journal()
    with caplog.at_level(logging.DEBUG, logger="clawpot.vmm.steps"):
        cleanup = await ABC.run(journal, label="vm1")
    assert journal.events == ["run a", "run b", "run c"]
    logged = [r for r in caplog.records if r.name == "clawpot.vmm.steps"]
    assert [getattr(r, "step", None) for r in logged] == ["a", "b", "c"]
    assert all(isinstance(getattr(r, "step_seconds", None), float) for r in logged)
    assert logged[0].getMessage().startswith("vm1: a (") and logged[0].getMessage().endswith(" ms)")
    # Success keeps the undos for whoever wants them, and runs none.
    assert cleanup.names == ("c", "a")


async def test_a_failing_step_undoes_the_finished_ones_in_reverse() -> None:
    journal = Journal()
    recipe = ABC.append(step("d", fail=RuntimeError("boom")), step("never"))
    with pytest.raises(RuntimeError, match="boom"):
        await recipe.run(journal)
    # d's own undo is not run: a failing step takes back its own half-done work.
    assert journal.events == ["run a", "run b", "run c", "run d", "undo c", "undo a"]


async def test_explain_runs_before_the_undos_and_its_error_is_raised() -> None:
    journal = Journal()
    seen: list[tuple[str, str]] = []

    async def explain(name: str, exc: Exception) -> BaseException:
        seen.append((name, str(exc)))
        journal.events.append("explain")
        return ValueError(f"{name}: explained")

    recipe = ABC.insert_after("a", step("x", fail=OSError("no such file")))
    with pytest.raises(ValueError, match=r"^x: explained$") as caught:
        await recipe.run(journal, explain=explain)
    assert isinstance(caught.value.__cause__, OSError)
    assert seen == [("x", "no such file")]
    assert journal.events == ["run a", "run x", "explain", "undo a"]


async def test_a_failing_undo_is_logged_and_the_others_still_run(caplog: pytest.LogCaptureFixture) -> None:
    journal = Journal()

    async def broken(_: Journal) -> None:
        raise OSError("undo broke")

    recipe = Recipe([step("a"), Step("b", step("b").run, broken), step("c", fail=RuntimeError("boom"))])
    with pytest.raises(RuntimeError, match="boom"):
        await recipe.run(journal)
    assert journal.events == ["run a", "run b", "run c", "undo a"]
    assert "undo of 'b' failed" in caplog.text


async def test_cancellation_runs_the_undos_and_stays_a_cancellation() -> None:
    journal = Journal()
    entered = asyncio.Event()

    async def hang(journal: Journal) -> None:
        journal.events.append("run hang")
        entered.set()
        await asyncio.sleep(3600)

    recipe = ABC.insert_before("c", Step("hang", hang, step("hang").undo))
    task = asyncio.create_task(recipe.run(journal))
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert journal.events == ["run a", "run b", "run hang", "undo a"]


async def test_cleanup_runs_once_even_when_asked_twice_at_once() -> None:
    journal = Journal()
    cleanup = await ABC.run(journal)
    await asyncio.gather(cleanup.run(), cleanup.run())
    await cleanup.run()
    assert journal.events == ["run a", "run b", "run c", "undo c", "undo a"]
    with pytest.raises(RuntimeError, match="already ran"):
        cleanup.push("late", Cleanup().run)


def test_edits_return_new_recipes_and_leave_the_original() -> None:
    assert ABC.names == ("a", "b", "c")
    assert ABC.replace("b", step("B")).names == ("a", "B", "c")
    assert ABC.insert_before("a", step("0")).names == ("0", "a", "b", "c")
    assert ABC.insert_after("c", step("d"), step("e")).names == ("a", "b", "c", "d", "e")
    assert ABC.remove("b").names == ("a", "c")
    assert ABC.names == ("a", "b", "c")
    assert "b" in ABC and "z" not in ABC and len(ABC) == 3
    assert ABC["c"].name == "c"
    assert repr(ABC) == "Recipe(a → b → c)"


def test_edits_naming_a_missing_step_or_duplicating_one_are_refused() -> None:
    with pytest.raises(RecipeError, match=r"no step 'z' in Recipe\(a → b → c\)"):
        ABC.replace("z", step("y"))
    with pytest.raises(RecipeError, match="no step 'z'"):
        ABC.insert_after("z", step("y"))
    with pytest.raises(RecipeError, match="unique: 'a'"):
        ABC.insert_after("c", step("a"))
