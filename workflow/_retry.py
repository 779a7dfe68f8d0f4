"""Retry policies: how often and how soon a failing step is tried again, and what happens
when the attempts run out."""

from __future__ import annotations

import enum
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

from ._clock import as_timedelta
from ._errors import NonRetryableError

__all__ = [
    "EXHAUSTED_ACTIONS",
    "FRESH_ATTEMPTS_ON_RESUME",
    "PausedBy",
    "RetryPolicy",
    "shorthand_policy",
]

EXHAUSTED_ACTIONS = ("pause", "cancel", "compensate")

Exhausted = Literal["pause", "cancel", "compensate"] | enum.IntEnum


class PausedBy(enum.StrEnum):
    """Why a run is paused (``record.meta.paused_by``; empty while it is not paused)."""

    RETRIES_EXHAUSTED = "retries exhausted"
    """The step failed ``max_attempts`` times and the policy's ``on_exhausted`` is "pause"."""
    NON_RETRYABLE = "non-retryable"
    """The step raised :class:`NonRetryableError` or one of the policy's ``non_retryable``."""
    STEP = "step"
    """The step, callback or timeout paused its own run (``run.pause()``)."""
    OPERATOR = "operator"
    """Someone called ``wf.pause(run_id)``."""
    COMPENSATION_FAILED = "compensation failed"
    """A compensation (saga) failed under its retry policy: a person has to look. Resuming
    the run tries the compensations left again."""


FRESH_ATTEMPTS_ON_RESUME = frozenset(
    {PausedBy.RETRIES_EXHAUSTED, PausedBy.NON_RETRYABLE, PausedBy.COMPENSATION_FAILED}
)
"""Why a paused run gets a fresh set of attempts (``attempt`` back to 1) when resumed."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a failing step (or timeout) is retried.

    Attempt ``n`` (1 on the first try) that fails is retried after
    ``min(initial_backoff * backoff_coefficient ** (n - 1), max_backoff)``, spread by
    ``jitter`` (a fraction: 0.2 means anywhere within ±20 %). The retry is scheduled for the
    run alone: other runs at the same status go on meanwhile.

    After ``max_attempts`` failed attempts (``None``: never), or at once for an exception in
    ``non_retryable`` (and :class:`NonRetryableError`), ``on_exhausted`` decides:

    - ``"pause"`` (the default): the run is paused, ``paused_by`` says why;
    - ``"cancel"``: the run is cancelled;
    - ``"compensate"``: the compensations of the steps the run completed run, newest first
      (``add_step(...).compensate_with(fn)``), then the run ends at the workflow's
      ``compensate_to`` status;
    - a status: the run moves there. It must be a declared transition of the step, e.g. a
      ``FAILED`` or a compensation status, checked by ``build()``.

    The default is luno's behaviour: unlimited attempts, a fixed 1 s backoff.
    """

    max_attempts: int | None = None
    initial_backoff: timedelta = timedelta(seconds=1)
    backoff_coefficient: float = 1.0
    max_backoff: timedelta | None = None
    jitter: float = 0.0
    non_retryable: tuple[type[BaseException], ...] = ()
    on_exhausted: Any = "pause"
    _rng: random.Random = field(default_factory=random.Random, repr=False, compare=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        m = self.max_attempts
        if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m < 1):
            raise ValueError(f"RetryPolicy.max_attempts must be None or an int >= 1, got {m!r}")
        set_(self, "initial_backoff", _duration("initial_backoff", self.initial_backoff))
        if self.max_backoff is not None:
            set_(self, "max_backoff", _duration("max_backoff", self.max_backoff))
        c = self.backoff_coefficient
        if isinstance(c, bool) or not isinstance(c, int | float) or not 1.0 <= c <= 1e6:
            raise ValueError(f"RetryPolicy.backoff_coefficient must be >= 1.0, got {c!r}")
        set_(self, "backoff_coefficient", float(c))
        j = self.jitter
        if isinstance(j, bool) or not isinstance(j, int | float) or not 0.0 <= j <= 1.0:
            raise ValueError(f"RetryPolicy.jitter must be a fraction in [0, 1], got {j!r}")
        set_(self, "jitter", float(j))
        set_(self, "non_retryable", _exception_types(self.non_retryable))
        on = self.on_exhausted
        if isinstance(on, enum.Enum):
            if not isinstance(on, int):
                raise ValueError(
                    f"RetryPolicy.on_exhausted must be a member of the status IntEnum, got {on!r}"
                )
        elif on not in EXHAUSTED_ACTIONS:
            raise ValueError(
                f"RetryPolicy.on_exhausted must be one of {list(EXHAUSTED_ACTIONS)} or a "
                f"status (a member of the workflow's IntEnum), got {on!r}"
            )

    def backoff(self, attempt: int) -> timedelta:
        """The wait after failed attempt ``attempt`` (1-based), jitter included."""
        base = self.initial_backoff.total_seconds()
        try:
            seconds = base * self.backoff_coefficient ** max(attempt - 1, 0)
        except OverflowError:
            seconds = float("inf")
        if self.max_backoff is not None:
            seconds = min(seconds, self.max_backoff.total_seconds())
        seconds = min(seconds, _LONGEST)
        if self.jitter:
            seconds *= 1.0 + self.jitter * (2.0 * self._rng.random() - 1.0)
        return timedelta(seconds=max(seconds, 0.0))

    def exhausted(self, attempt: int) -> bool:
        """Whether failed attempt ``attempt`` was the last one allowed."""
        return self.max_attempts is not None and attempt >= self.max_attempts

    def gives_up_on(self, err: BaseException) -> bool:
        """Whether ``err`` is not retried: a :class:`NonRetryableError` or one of
        ``non_retryable``."""
        if isinstance(err, NonRetryableError):
            return True
        return bool(self.non_retryable) and isinstance(err, self.non_retryable)


# A retry further out than ten years is a bug in the policy, not a plan.
_LONGEST = timedelta(days=3650).total_seconds()


def _duration(name: str, value: Any) -> timedelta:
    try:
        d = as_timedelta(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"RetryPolicy.{name}: {err}") from None
    if d < timedelta(0):
        raise ValueError(f"RetryPolicy.{name} must not be negative, got {value!r}")
    return d


def _exception_types(value: Any) -> tuple[type[BaseException], ...]:
    items: Iterable[Any] = (value,) if isinstance(value, type) else value
    try:
        types = tuple(items)
    except TypeError:
        raise ValueError(
            f"RetryPolicy.non_retryable must be exception types, got {value!r}"
        ) from None
    for t in types:
        if not (isinstance(t, type) and issubclass(t, BaseException)):
            raise ValueError(f"RetryPolicy.non_retryable: {t!r} is not an exception type")
    return types


def shorthand_policy(err_backoff: timedelta, pause_after_err_count: int) -> RetryPolicy:
    """The policy ``err_backoff`` / ``pause_after_err_count`` stand for: a fixed backoff,
    and a pause after that many failed attempts (0: never)."""
    return RetryPolicy(
        max_attempts=pause_after_err_count or None,
        initial_backoff=err_backoff,
        on_exhausted="pause",
    )
