"""Schedule specs for recurring workflows.

Three forms are accepted (surrounding whitespace is ignored):

* ``@every <duration>`` -- a fixed interval written as a Go-style duration:
  one or more ``<number><unit>`` groups with units ``ns``, ``us``/``µs``,
  ``ms``, ``s``, ``m``, ``h`` and optionally decimal numbers (``90s``,
  ``1h30m``, ``1.5h``).  It must be at least one microsecond, the resolution
  of :class:`~datetime.timedelta`; any sub-microsecond remainder is dropped.
* a descriptor: ``@yearly``, ``@annually``, ``@monthly``, ``@weekly``,
  ``@daily``, ``@midnight`` or ``@hourly``.
* a standard 5-field crontab ``minute hour day-of-month month day-of-week``
  (``*``, ``?``, numbers, ranges, lists, steps, month/day names; day-of-week
  ``0``-``7`` with both ``0`` and ``7`` meaning Sunday).  When day-of-month
  and day-of-week are both restricted, a day matches if *either* matches, as
  in Vixie cron; a field starting with ``*`` (such as ``*/2``) does not
  count as restricted.

Crontab and descriptor matching is delegated to :mod:`croniter`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from fractions import Fraction

from croniter import CroniterBadDateError, CroniterError, croniter

__all__ = ["CronSchedule", "parse_schedule"]

_ACCEPTED = (
    "expected '@every <duration>' (e.g. '@every 1h30m'), one of the descriptors "
    "@yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly, or a "
    "5-field crontab 'minute hour day-of-month month day-of-week'"
)

_DESCRIPTORS: dict[str, str] = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

# Go's duration units; "\u00b5s" is the micro sign, "\u03bcs" the Greek mu.
_UNIT_NS = {"ns": 1, "us": 10**3, "\u00b5s": 10**3, "\u03bcs": 10**3, "ms": 10**6}
_UNIT_NS |= {"s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}
_GROUP = re.compile("([0-9]+(?:\\.[0-9]*)?|\\.[0-9]+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")
_DURATION = re.compile(f"(?:{_GROUP.pattern})+")

# croniter extensions that are not reproducible: ``R`` picks a new random value
# every time an iterator is built, ``H`` needs a hash id.  Month and day names
# are three letters long, so a lone H/R can only be one of these.
_NONDETERMINISTIC = re.compile(r"(?<![a-z])[hr](?![a-z])", re.IGNORECASE)

_NAMES = {n: i for i, n in enumerate("jan feb mar apr may jun jul aug sep oct nov dec".split(), 1)}
_NAMES |= {n: i for i, n in enumerate("sun mon tue wed thu fri sat".split())}

_PROBE_START = datetime(2000, 1, 1, tzinfo=UTC)


def _parse_duration(text: str) -> timedelta:
    """Parse a Go-style duration (``1h30m``, ``1.5h``, ``100ms``) exactly."""
    if text.startswith("-"):
        raise ValueError(f"invalid @every duration {text!r}: must be positive")
    if not _DURATION.fullmatch(text):
        raise ValueError(
            f"invalid @every duration {text!r}: expected one or more "
            "<number><unit> groups with units ns, us, µs, ms, s, m, h "
            "(e.g. '90s', '5m', '1h30m', '1.5h')"
        )
    groups = _GROUP.findall(text)
    micros = int(sum((Fraction(n) * _UNIT_NS[u] for n, u in groups), Fraction(0)) / 1000)
    if micros <= 0:
        raise ValueError(
            f"invalid @every duration {text!r}: must be at least 1us "
            "(a positive duration; the smallest supported interval is 1us)"
        )
    try:
        return timedelta(microseconds=micros)
    except OverflowError:
        raise ValueError(f"invalid @every duration {text!r}: too large") from None


def _collapse_equal_ranges(field: str) -> str:
    """Rewrite ``a-a`` and ``a-a/n`` as ``a``.

    croniter reads an equal range as the whole cycle ("5-5" is "*"); in Vixie
    cron and robfig/cron it is the single value.
    """
    parts = field.split(",")
    for i, part in enumerate(parts):
        low, dash, high = part.split("/", 1)[0].partition("-")
        bounds = [
            _NAMES.get(b.lower(), int(b) if b.isascii() and b.isdigit() else None)
            for b in (low, high)
        ]
        if dash and bounds[0] is not None and bounds[0] == bounds[1]:
            parts[i] = low
    return ",".join(parts)


def _parse_crontab(spec: str) -> tuple[str, bool]:
    """Validate a 5-field crontab; return ``(expression, day_or)``.

    ``day_or`` follows crontab(5): if both day fields are restricted (neither
    starts with ``*`` or ``?``) a day matches when either field matches,
    otherwise both must match.  croniter's own ``day_or=True`` would also OR a
    stepped star such as ``*/2``, unlike Vixie cron and robfig/cron.
    """
    fields = spec.split()
    if len(fields) != 5:
        raise ValueError(
            f"crontab spec must have 5 fields, got {len(fields)}: {spec!r}; {_ACCEPTED}"
        )
    fields = [_collapse_equal_ranges(f) for f in fields]
    expr = " ".join(fields)
    if _NONDETERMINISTIC.search(expr):
        raise ValueError(
            f"invalid crontab spec {spec!r}: random (R) and hashed (H) "
            f"fields are not supported; {_ACCEPTED}"
        )
    day_or = not any(f.startswith(("*", "?")) for f in (fields[2], fields[4]))
    try:
        # croniter only checks syntax when constructed; a trial get_next()
        # rejects specs that never fire, such as "0 0 30 2 *".
        croniter(expr, _PROBE_START, day_or=day_or).get_next(datetime)
    except CroniterBadDateError:
        raise ValueError(f"crontab spec {spec!r} never matches any date") from None
    except (CroniterError, ValueError, KeyError, IndexError) as exc:
        raise ValueError(f"invalid crontab spec {spec!r}: {exc}; {_ACCEPTED}") from None
    return expr, day_or


def _parse(spec: str) -> timedelta | tuple[str, bool]:
    """Return the ``@every`` interval or the crontab ``(expression, day_or)``."""
    if not spec:
        raise ValueError(f"empty schedule spec; {_ACCEPTED}")
    if not spec.startswith("@"):
        return _parse_crontab(spec)
    head, *rest = spec.split(None, 1)
    if head == "@every":
        if not rest:
            raise ValueError(f"@every needs a duration, e.g. '@every 5m'; got {spec!r}")
        return _parse_duration(rest[0].strip())
    if head not in _DESCRIPTORS:
        raise ValueError(f"unknown descriptor: {head}; {_ACCEPTED}")
    if rest:
        raise ValueError(f"descriptor {head} takes no arguments, got {spec!r}")
    return _parse_crontab(_DESCRIPTORS[head])


@dataclass(frozen=True)
class CronSchedule:
    """A parsed, validated schedule spec; build it with :func:`parse_schedule`.

    ``spec`` is the stripped source text.  ``interval`` is set for ``@every``
    schedules and ``None`` for crontabs and descriptors.
    """

    spec: str
    interval: timedelta | None = field(init=False, default=None, compare=False)
    _crontab: tuple[str, bool] | None = field(init=False, default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        spec = self.spec.strip()
        parsed = _parse(spec)
        object.__setattr__(self, "spec", spec)
        if isinstance(parsed, timedelta):
            object.__setattr__(self, "interval", parsed)
        else:
            object.__setattr__(self, "_crontab", parsed)

    def next(self, after: datetime) -> datetime:
        """Return the first fire time strictly after ``after``.

        ``after`` must be timezone-aware; the result carries the same tzinfo.
        ``@every`` adds the interval in absolute (UTC) time, so DST changes do
        not stretch or shrink it.  Crontabs have minute resolution and match
        wall-clock time in ``after``'s timezone.
        """
        tz = after.tzinfo
        if tz is None or after.utcoffset() is None:
            raise ValueError(f"after must be a timezone-aware datetime, got naive {after!r}")
        if self.interval is not None:
            return (after.astimezone(UTC) + self.interval).astimezone(tz)
        if self._crontab is None:  # pragma: no cover - __post_init__ sets one
            raise AssertionError("CronSchedule has neither interval nor crontab")
        expr, day_or = self._crontab
        return croniter(expr, after, day_or=day_or).get_next(datetime)


def parse_schedule(spec: str) -> CronSchedule:
    """Parse ``spec``; raise :class:`ValueError` naming the problem if invalid."""
    if not isinstance(spec, str):
        raise ValueError(f"a schedule spec must be a str, got {type(spec).__name__}")
    return CronSchedule(spec)
