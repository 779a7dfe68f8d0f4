"""The error tree of the engine.

Every error the engine raises on purpose derives from :class:`WorkflowError`::

    WorkflowError
    ├── RecordNotFoundError          no run with that id / foreign id
    ├── WorkflowInProgressError      the foreign id already has an unfinished run
    ├── IdempotencyKeyUsedError      (from stores) a run already has the trigger's key
    ├── InvalidTransitionError       a status move that the graph does not declare
    ├── InvalidStatusError           (also a ValueError) a status argument the workflow refuses
    ├── UnstorableObjectError        (also a ValueError) an object JSON cannot carry faithfully
    ├── ConcurrentUpdateError        a stale write: someone else stored a newer version first
    ├── RunStateError
    │   ├── UnableToPauseError
    │   ├── UnableToResumeError
    │   ├── UnableToCancelError
    │   └── UnableToDeleteError
    ├── RunFinishedError             await_ on a run that finished at another status
    ├── StepInterruptedError         user code raised a BaseException that is not an Exception
    ├── StepTimeoutError             user code ran longer than its step_timeout
    └── NonRetryableError            raised by user code: give up at once (no retry)

Malformed arguments raise :class:`ValueError` (pydantic's ``ValidationError`` is one).
Each message says what happened and what to do next.
"""

from __future__ import annotations

__all__ = [
    "ConcurrentUpdateError",
    "IdempotencyKeyUsedError",
    "InvalidStatusError",
    "InvalidTransitionError",
    "NonRetryableError",
    "RecordNotFoundError",
    "RunFinishedError",
    "RunStateError",
    "StepInterruptedError",
    "StepTimeoutError",
    "UnableToCancelError",
    "UnableToDeleteError",
    "UnableToPauseError",
    "UnableToResumeError",
    "UnstorableObjectError",
    "WorkflowError",
    "WorkflowInProgressError",
]


class WorkflowError(Exception):
    """Root of every error the engine raises on purpose.

    ``retriable`` tells a caller whether doing the same thing again may succeed.
    """

    retriable: bool = False


class RecordNotFoundError(WorkflowError, LookupError):
    """No run matches. Check the run id / foreign id and the workflow name."""


class WorkflowInProgressError(WorkflowError):
    """The foreign id already has an unfinished run.

    Wait for it to finish (``await wf.await_(...)``), cancel it, or use another foreign id.
    """

    retriable = True


class InvalidTransitionError(WorkflowError):
    """A step, callback or timeout returned a status that the graph does not allow from here.

    Declare the edge in the builder (``add_step(from, fn, *to)``) or return an allowed status.
    """


class InvalidStatusError(WorkflowError, ValueError):
    """A status argument (``trigger(start_at=...)``, ``await_``, ``callback``) that is not a
    member of the workflow's status enum, is a member of another enum, or is no node of the
    graph. Pass a member of the workflow's own status enum that the builder configured.
    """


class UnstorableObjectError(WorkflowError, ValueError):
    """The object cannot be stored as JSON and read back as it was: a float that is NaN or
    ±infinity (JSON has no such numbers; pydantic would write ``null``), or a NUL character
    in a string (PostgreSQL cannot store it). Nothing was written. Replace the value (e.g.
    with ``None``) before triggering or returning from the step.
    """


class ConcurrentUpdateError(WorkflowError):
    """The run changed since it was read (compare-and-set refused a stale version).

    Nothing was written. Read the run again and decide again.
    """

    retriable = True


class RunStateError(WorkflowError):
    """A run-state move that is not allowed from the run's current state."""


class UnableToPauseError(RunStateError):
    """Only Initiated or Running runs can be paused."""


class UnableToResumeError(RunStateError):
    """Only Paused runs can be resumed."""


class UnableToCancelError(RunStateError):
    """Only Initiated, Running or Paused runs can be cancelled."""


class UnableToDeleteError(RunStateError):
    """Only Completed, Cancelled or DataDeleted runs can have their data deleted."""


class RunFinishedError(WorkflowError):
    """``await_`` waited for a status the run can no longer reach: it finished elsewhere."""


class StepInterruptedError(WorkflowError):
    """A step, callback, timer, timeout, hook or connector function raised a
    ``BaseException`` that is not an ``Exception``: a ``CancelledError`` the engine did not
    request, ``GeneratorExit``, or a ``BaseException`` subclass of your own.

    It is a step error like any other: logged, counted, retried after the backoff and paused
    by ``pause_after_err_count``. Raise an ``Exception`` subclass to report a failure.
    """

    retriable = True


class StepTimeoutError(WorkflowError):
    """A user function ran longer than its ``step_timeout`` option and was abandoned.

    An ``async def`` was cancelled; a plain ``def`` keeps running on its (daemon) thread and
    its result is discarded. Counted as a step error. Make the function faster or raise the
    ``step_timeout`` option.
    """

    retriable = True


class NonRetryableError(WorkflowError):
    """Raise from a step, timeout or timer function to give up at once: no retry, the retry
    policy's ``on_exhausted`` applies (by default the run is paused, ``paused_by``
    "non-retryable").

    The error message becomes the run's ``meta.run_state_reason``. Fix the cause, then
    ``await wf.resume(run_id)``.
    """


class IdempotencyKeyUsedError(WorkflowError):
    """Raised by a record store for a new run whose idempotency key a run of the same
    workflow already has; ``run_id`` is that run. ``trigger`` returns it instead: users see
    this error only when they call a store directly."""

    def __init__(self, message: str, run_id: str) -> None:
        super().__init__(message)
        self.run_id = run_id
