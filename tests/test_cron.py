"""Tests for workflow._cron: schedule parsing and next-fire computation."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pytest

from workflow._cron import CronSchedule, parse_schedule


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, sec: int = 0, us: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, sec, us, tzinfo=UTC)


BASE = utc(2025, 1, 1, 10, 30)  # a Wednesday

NEXT_CASES: list[tuple[str, datetime, datetime]] = [
    # @every
    ("@every 5m", BASE, BASE + timedelta(minutes=5)),
    ("@every 1h30m", BASE, BASE + timedelta(minutes=90)),
    ("@every 90s", BASE, BASE + timedelta(seconds=90)),
    ("@every 1.5h", BASE, BASE + timedelta(minutes=90)),
    ("@every 100ms", BASE, BASE + timedelta(milliseconds=100)),
    ("@every 1us", BASE, BASE + timedelta(microseconds=1)),
    ("@every 1\u00b5s", BASE, BASE + timedelta(microseconds=1)),
    ("@every 2h45m30s", BASE, BASE + timedelta(hours=2, minutes=45, seconds=30)),
    # descriptors
    ("@midnight", BASE, utc(2025, 1, 2)),
    ("@daily", BASE, utc(2025, 1, 2)),
    ("@hourly", BASE, utc(2025, 1, 1, 11)),
    ("@hourly", utc(2025, 1, 1, 10), utc(2025, 1, 1, 11)),
    ("@weekly", BASE, utc(2025, 1, 5)),  # Sunday
    ("@monthly", BASE, utc(2025, 2, 1)),
    ("@yearly", BASE, utc(2026, 1, 1)),
    ("@annually", BASE, utc(2026, 1, 1)),
    # crontab
    ("* * * * *", BASE, utc(2025, 1, 1, 10, 31)),
    ("15 * * * *", BASE, utc(2025, 1, 1, 11, 15)),
    ("30 2 * * *", BASE, utc(2025, 1, 2, 2, 30)),
    ("0 9 15 * *", BASE, utc(2025, 1, 15, 9)),
    ("0 18 * * 5", BASE, utc(2025, 1, 3, 18)),
    ("0 12 1 1 *", BASE, utc(2025, 1, 1, 12)),
    ("0 0 ? * *", BASE, utc(2025, 1, 2)),
    ("45 3 * * 6", BASE, utc(2025, 1, 4, 3, 45)),
    ("59 23 * * 0", BASE, utc(2025, 1, 5, 23, 59)),
    ("59 23 * * 7", BASE, utc(2025, 1, 5, 23, 59)),
    ("0 6 * * 7", BASE, utc(2025, 1, 5, 6)),
    ("0 0 28 2 *", BASE, utc(2025, 2, 28)),
    ("30 6 25 12 *", BASE, utc(2025, 12, 25, 6, 30)),
    ("  0 0 * * *  ", BASE, utc(2025, 1, 2)),
    ("0 0 1 1 0", BASE, utc(2025, 1, 5)),  # dom OR dow: first Sunday wins
    ("59 23 31 12 6", BASE, utc(2025, 12, 6, 23, 59)),  # dom OR dow: first Saturday
    ("0 0 1 12 *", utc(2025, 11, 30), utc(2025, 12, 1)),
    ("0 0 1 1 *", utc(2025, 12, 31), utc(2026, 1, 1)),
    ("0 12 29 2 *", utc(2024, 2, 28), utc(2024, 2, 29, 12)),
    ("0 12 29 2 *", utc(2025, 2, 28), utc(2028, 2, 29, 12)),
    ("0 9 * * 1", utc(2025, 1, 5, 10, 30), utc(2025, 1, 6, 9)),
    # ranges, lists, steps, names
    ("*/15 9-17 * * 1-5", BASE, utc(2025, 1, 1, 10, 45)),
    ("*/15 9-17 * * 1-5", utc(2025, 1, 3, 17, 50), utc(2025, 1, 6, 9)),  # Fri -> Mon
    ("0 0 1,15 * *", BASE, utc(2025, 1, 15)),
    ("0 */6 * * *", BASE, utc(2025, 1, 1, 12)),
    ("0 9 * * mon-fri", utc(2025, 1, 4), utc(2025, 1, 6, 9)),
    ("0 0 1 jun *", BASE, utc(2025, 6, 1)),
    # equal ranges mean one value (croniter alone would read "1-1" as "*")
    ("0 0 * * 1-1", BASE, utc(2025, 1, 6)),
    ("0 0 * mar-mar *", BASE, utc(2025, 3, 1)),
    ("0 9-9/2 * * *", BASE, utc(2025, 1, 2, 9)),
    ("0 0 * * 5-05", BASE, utc(2025, 1, 3)),
    ("0 0 * * sun-0", BASE, utc(2025, 1, 5)),
    # a day field starting with "*" is unrestricted, so dom AND dow (crontab(5)):
    # odd days that are Mondays; croniter alone would OR them (2025-01-03).
    ("0 0 */2 * 1", BASE, utc(2025, 1, 13)),
    ("0 0 1 * */2", BASE, utc(2025, 2, 1)),  # the 1st on Sun/Tue/Thu/Sat
]


@pytest.mark.parametrize(("spec", "after", "expected"), NEXT_CASES)
def test_next(spec: str, after: datetime, expected: datetime) -> None:
    got = parse_schedule(spec).next(after)
    assert got == expected
    assert got.tzinfo is after.tzinfo
    assert got > after


@pytest.mark.parametrize(
    ("after", "expected"),
    [
        (utc(2025, 1, 1, 10, 30), utc(2025, 1, 1, 10, 31)),
        (utc(2025, 1, 1, 10, 30, 20), utc(2025, 1, 1, 10, 31)),
        (utc(2025, 1, 1, 10, 30, 59, 999999), utc(2025, 1, 1, 10, 31)),
        (utc(2025, 1, 1, 10, 29, 59, 999999), utc(2025, 1, 1, 10, 30)),
    ],
)
def test_crontab_is_minute_resolution_and_strictly_after(
    after: datetime, expected: datetime
) -> None:
    assert parse_schedule("* * * * *").next(after) == expected


def test_seconds_in_base_do_not_refire_same_minute() -> None:
    schedule = parse_schedule("30 10 * * *")
    assert schedule.next(utc(2025, 1, 1, 10, 30, 0, 500000)) == utc(2025, 1, 2, 10, 30)


@pytest.mark.parametrize("spec", ["0 0 * * *", "@every 5m", "15 * * * *"])
def test_keeps_non_utc_tzinfo(spec: str) -> None:
    tz = timezone(timedelta(hours=2))
    after = datetime(2025, 1, 1, 10, 30, tzinfo=tz)
    got = parse_schedule(spec).next(after)
    assert got.tzinfo is tz
    assert got > after


def test_crontab_uses_wall_clock_of_after_timezone() -> None:
    tz = timezone(timedelta(hours=2))
    got = parse_schedule("0 0 * * *").next(datetime(2025, 1, 1, 10, 30, tzinfo=tz))
    assert got == datetime(2025, 1, 2, tzinfo=tz)
    assert got == utc(2025, 1, 1, 22)


def _berlin() -> ZoneInfo:
    try:
        return ZoneInfo("Europe/Berlin")
    except ZoneInfoNotFoundError:  # pragma: no cover - depends on system tzdata
        pytest.skip("tz database not available")


def test_every_is_absolute_across_dst() -> None:
    tz = _berlin()
    after = datetime(2025, 10, 26, 2, 30, tzinfo=tz)  # CEST, just before fall-back
    got = parse_schedule("@every 1h").next(after)
    assert got.tzinfo is tz
    assert got.timestamp() - after.timestamp() == 3600


@pytest.mark.parametrize("start", [datetime(2025, 10, 26, 1, 10), datetime(2025, 3, 30, 1, 10)])
def test_crontab_strictly_increasing_across_dst(start: datetime) -> None:
    tz = _berlin()
    schedule = parse_schedule("*/30 * * * *")
    current = start.replace(tzinfo=tz)
    for _ in range(8):
        following = schedule.next(current)
        assert following.tzinfo is tz
        assert following.timestamp() > current.timestamp()
        current = following


def test_schedule_object() -> None:
    every = parse_schedule("  @every 1h30m ")
    assert every.spec == "@every 1h30m"
    assert every.interval == timedelta(minutes=90)
    assert parse_schedule("@daily").interval is None
    assert parse_schedule("0 0 * * *").interval is None
    assert parse_schedule("@every 5m") == CronSchedule("@every 5m")
    with pytest.raises(dataclasses.FrozenInstanceError):
        every.spec = "@hourly"  # type: ignore[misc]


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "   ",
        "@every",
        "@every ",
        "@every invalid",
        "@every 0s",
        "@every 0h0m",
        "@every -5m",
        "@every 5",
        "@every 5d",
        "@every 1h 30m",
        "@every 1ns",
        "@every 1e3s",
        "@unknown",
        "@reboot",
        "@DAILY",
        "@daily extra",
        "* * *",
        "* * * * * *",
        " * * * *",
        "60 * * * *",
        "* 24 * * *",
        "* * 32 * *",
        "* * * 13 *",
        "* * * * 8",
        "-1 * * * *",
        "* * -5 * *",
        "abc * * * *",
        "* * 0 * *",
        "* * * 0 *",
        "*/0 * * * *",
        "1,,2 * * * *",
        "0 0 30 2 *",  # never matches
        "R * * * *",  # croniter's random field: not reproducible
        "H * * * *",
    ],
)
def test_invalid_spec(spec: str) -> None:
    with pytest.raises(ValueError):
        parse_schedule(spec)


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("* * *", "crontab spec must have 5 fields, got 3"),
        ("* * * * * *", "crontab spec must have 5 fields, got 6"),
        (" * * * *", "crontab spec must have 5 fields, got 4"),
        ("@x", "unknown descriptor: @x"),
        ("@every", "@every needs a duration"),
        ("@every 0s", "must be at least 1us"),
        ("@every -5m", "must be positive"),
        ("@every invalid", "invalid @every duration 'invalid'"),
        ("60 * * * *", "invalid crontab spec '60 * * * *'"),
        ("0 0 30 2 *", "never matches"),
        ("", "empty schedule spec"),
    ],
)
def test_error_message(spec: str, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_schedule(spec)
    assert fragment in str(info.value)


@pytest.mark.parametrize("spec", ["60 * * * *", "@bogus", "* * *", "@every 1x"])
def test_error_message_says_what_is_accepted(spec: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_schedule(spec)
    message = str(info.value)
    assert "crontab" in message or "ns, us" in message


@pytest.mark.parametrize("spec", ["@every 5m", "@daily", "*/5 * * * *"])
def test_naive_after_rejected(spec: str) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        parse_schedule(spec).next(datetime(2025, 1, 1, 10, 30))
