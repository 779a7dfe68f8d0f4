"""``Run``: what a step, callback or timeout function receives, and what it may return."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Generator
from typing import Any, TypeVar, Union

from ._log import RunLogger
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
ChildStarter = Callable[..., Record]


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

    __slots__ = (
        "_children",
        "_controller",
        "_log",
        "_logger",
        "_starter",
        "_state_changed",
        "attempt",
    )

    def __init__(
        self,
        record: Record,
        status: S,
        obj: T,
        controller: Controller,
        starter: ChildStarter | None = None,
        log: logging.Logger | None = None,
    ) -> None:
        super().__init__(record, status, obj)
        self._controller = controller
        self._starter = starter
        self._children: list[Record] = []
        self._state_changed = False
        self._log = log
        self._logger: RunLogger | None = None
        self.attempt: int = record.meta.attempt
        """The try of this status visit: 1 the first time, 2 on the first retry, and so on."""

    @property
    def logger(self) -> RunLogger:
        """A :class:`logging.LoggerAdapter` on the workflow's logger that adds the run's
        workflow, foreign id, run id, status, attempt and (while tracing) trace and span ids
        to every line, in the message and in ``record.workflow_context``."""
        if self._logger is None:
            self._logger = RunLogger(self._log or logging.getLogger("workflow"), self)
        return self._logger

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

    def start_child(
        self,
        workflow: Any,
        key: str,
        *,
        initial_value: Any = None,
        start_at: Any = None,
        foreign_id: str | None = None,
    ) -> str:
        """Start a run of ``workflow`` (another built workflow on the same record store, or
        this one) as a child of this run, and return the child's run id.

        The child is created together with what this step stores, in one transaction: when
        the step moves the run (or saves and repeats), the parent's new version and every
        child started in the step commit together, or none of them does. A step that
        started children must store something (not skip). ``key`` names the child among
        this run's children of one step (e.g. ``"flight"`` or an item id). A step that runs
        again (a retry, a redelivered event) never adds a second set: only one attempt's
        write commits. The child's run id is derived from the parent's run id, its visit to
        the status and ``key``, so the retries of a step see the same ids. The child's
        ``foreign_id`` defaults to ``"{parent foreign id}/{key}"``; its record names the
        parent (``meta.parent_workflow``, ``meta.parent_run_id``).
        """
        if self._starter is None:
            raise RuntimeError("start_child is only available inside a step")
        child = self._starter(self, workflow, key, initial_value, start_at, foreign_id)
        self._children.append(child)
        return child.run_id
