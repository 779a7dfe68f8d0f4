"""``Run``: what a step, callback or timeout function receives, and what it may return."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from typing import Any, TypeVar, Union

from ._record import Record, TypedRecord
from ._runstate import RunState

__all__ = ["SAVE_AND_REPEAT", "SKIP", "Directive", "Run", "RunStateChange", "StepResult"]

T = TypeVar("T")
S = TypeVar("S")


class Directive:
    """A non-status result of a step: skip, save-and-repeat, or a run-state change."""

    __slots__ = ("kind",)

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __repr__(self) -> str:
        return f"<{self.kind}>"


SKIP = Directive("skip")
SAVE_AND_REPEAT = Directive("save and repeat")

Controller = Callable[["Run[Any, Any]", RunState, str], Awaitable[None]]


class RunStateChange(Directive):
    """Returned by :meth:`Run.pause` / :meth:`Run.cancel`.

    ``await run.pause(reason)`` stores the change at once; returning the result without
    awaiting it (e.g. from a plain ``def`` step running in a thread) makes the engine store it.
    Either way the run's current object is stored with it.
    """

    __slots__ = ("_run", "applied", "reason", "target")

    def __init__(self, run: Run[Any, Any], target: RunState, reason: str) -> None:
        super().__init__(f"run state -> {target.name}")
        self._run = run
        self.target = target
        self.reason = reason
        self.applied = False

    async def apply(self) -> RunStateChange:
        if not self.applied:
            self.applied = True
            await self._run._controller(self._run, self.target, self.reason)
            self._run._state_changed = True
        return self

    def __await__(self) -> Generator[Any, None, RunStateChange]:
        return self.apply().__await__()


StepResult = Union[S, Directive, None]  # noqa: UP007 - generic alias
"""What a step may return: a status, a directive, or ``None`` (skip)."""


class Run(TypedRecord[T, S]):
    """One run as handed to user code. Mutate ``run.object`` (or assign it) and return the
    next status. Do not keep it after the function returns.

    ``status`` is a member of the status enum, or the stored ``int`` for a run at a status
    the enum no longer has (see :class:`TypedRecord`); such a run can still be listed,
    paused, resumed, cancelled and have its data deleted.
    """

    __slots__ = ("_controller", "_state_changed", "attempt")

    def __init__(self, record: Record, status: S, obj: T, controller: Controller) -> None:
        super().__init__(record, status, obj)
        self._controller = controller
        self._state_changed = False
        self.attempt: int = record.meta.attempt
        """The try of this status visit: 1 the first time, 2 on the first retry, and so on."""

    def skip(self) -> Directive:
        """Store nothing and move on to the next event."""
        return SKIP

    def save_and_repeat(self) -> Directive:
        """Store the object, keep the status, and run the step again."""
        return SAVE_AND_REPEAT

    def pause(self, reason: str = "") -> RunStateChange:
        """Pause the run (it can be resumed). ``await`` it, or return it."""
        return RunStateChange(self, RunState.PAUSED, reason)

    def cancel(self, reason: str = "") -> RunStateChange:
        """Cancel the run (final). ``await`` it, or return it."""
        return RunStateChange(self, RunState.CANCELLED, reason)
