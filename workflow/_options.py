"""Per-process options and outbox options."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from datetime import timedelta
from typing import Any

from ._clock import as_timedelta
from ._retry import RetryPolicy, shorthand_policy

__all__ = [
    "DEFAULT_OPTIONS",
    "OutboxOptions",
    "ProcessOptions",
    "make_options",
    "resolved",
    "retry_policy",
    "timeout_seconds",
]


@dataclass(frozen=True, slots=True)
class ProcessOptions:
    """Options of one background process (a step, a timeout, a connector).

    ``None`` means "use the workflow default" (``build(default_options=...)``), which in turn
    falls back to the built-in defaults below.
    """

    parallel_count: int | None = None
    polling_frequency: timedelta | None = None
    err_backoff: timedelta | None = None
    lag: timedelta | None = None
    lag_alert: timedelta | None = None
    pause_after_err_count: int | None = None
    concurrency: int | None = None
    step_timeout: timedelta | None = None
    retry: RetryPolicy | None = None

    def over(self, base: ProcessOptions) -> ProcessOptions:
        """These options with every unset field taken from ``base``."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return replace(base, **{k: v for k, v in values.items() if v is not None})


def resolved(options: ProcessOptions, name: str) -> Any:
    """An option of options already merged over the defaults (so never ``None``)."""
    value = getattr(options, name)
    assert value is not None, name
    return value


DEFAULT_OPTIONS = ProcessOptions(
    parallel_count=1,
    polling_frequency=timedelta(milliseconds=500),
    err_backoff=timedelta(seconds=1),
    lag=timedelta(0),
    lag_alert=timedelta(minutes=30),
    pause_after_err_count=0,
    concurrency=1,
    step_timeout=timedelta(0),
)

_DURATIONS = ("polling_frequency", "err_backoff", "lag", "lag_alert", "step_timeout")
_COUNTS = ("parallel_count", "pause_after_err_count", "concurrency")


def make_options(**options: Any) -> ProcessOptions:
    """Validate keyword options into :class:`ProcessOptions` (``ValueError`` names the bad one).

    When ``lag`` is given without ``lag_alert``, the alert threshold becomes
    ``30 min + lag`` (as in luno), so a deliberately lagged consumer does not alert.
    """
    known = set(_DURATIONS) | set(_COUNTS) | {"retry"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"unknown option(s) {unknown}; valid options are {sorted(known)}")
    values: dict[str, Any] = {}
    for name in _DURATIONS:
        if name in options and options[name] is not None:
            d = as_timedelta(options[name])
            if d < timedelta(0):
                raise ValueError(f"{name} must not be negative, got {options[name]!r}")
            values[name] = d
    for name in _COUNTS:
        if name in options and options[name] is not None:
            v = options[name]
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be a non-negative int, got {v!r}")
            if name in ("parallel_count", "concurrency") and v < 1:
                raise ValueError(f"{name} must be at least 1")
            values[name] = v
    retry = options.get("retry")
    if retry is not None:
        if not isinstance(retry, RetryPolicy):
            raise ValueError(f"retry must be a RetryPolicy, got {retry!r}")
        values["retry"] = retry
    if "lag" in values and "lag_alert" not in values and values["lag"] > timedelta(0):
        assert DEFAULT_OPTIONS.lag_alert is not None
        values["lag_alert"] = DEFAULT_OPTIONS.lag_alert + values["lag"]
    return ProcessOptions(**values)


def retry_policy(own: ProcessOptions, defaults: ProcessOptions) -> RetryPolicy:
    """The retry policy of a process whose own options are ``own``, under the workflow's
    ``defaults`` (already merged over the built-in ones). The most specific setting wins: the
    process's ``retry``, then its ``err_backoff`` / ``pause_after_err_count`` shorthands, then
    the workflow's ``retry``, then the workflow's shorthands (luno's behaviour by default)."""
    if own.retry is not None:
        return own.retry
    merged = own.over(defaults)
    shorthand = shorthand_policy(
        resolved(merged, "err_backoff"), resolved(merged, "pause_after_err_count")
    )
    if own.err_backoff is not None or own.pause_after_err_count is not None:
        return shorthand
    return defaults.retry if defaults.retry is not None else shorthand


def timeout_seconds(options: ProcessOptions) -> float | None:
    """``step_timeout`` in seconds, or None when it is off (zero)."""
    t = resolved(options, "step_timeout")
    return t.total_seconds() if t > timedelta(0) else None


@dataclass(frozen=True, slots=True)
class OutboxOptions:
    """The outbox relay: it wakes as soon as this process stores a record and otherwise looks
    for rows every ``polling_frequency`` (rows written by other processes)."""

    polling_frequency: timedelta = timedelta(milliseconds=250)
    err_backoff: timedelta = timedelta(milliseconds=500)
    lookup_limit: int = 1000
    lag_alert: timedelta = timedelta(minutes=1)

    def __post_init__(self) -> None:
        for name in ("polling_frequency", "err_backoff", "lag_alert"):
            object.__setattr__(self, name, as_timedelta(getattr(self, name)))
        if self.lookup_limit < 1:
            raise ValueError("OutboxOptions.lookup_limit must be at least 1")
