"""Log lines that repeat while something stays broken (a database outage), rate-limited.

A line is written the first time, then at most once every :data:`EVERY` seconds per key
(saying how many like it were left out meanwhile), and :meth:`Throttle.recovered` writes one
line when the thing works again. Every repeating log line of the SQL adapters goes through
one of these, so an outage logs a few lines a minute, not several a second.
"""

from __future__ import annotations

import logging
import time
from typing import Any

__all__ = ["EVERY", "Throttle", "unreachable"]

EVERY = 30.0
"""Seconds between two lines of one key."""


class Throttle:
    """Rate-limited log lines of one logger, by key (see the module docstring)."""

    def __init__(self, logger: logging.Logger, every: float = EVERY) -> None:
        self._log = logger
        self._every = every
        self._last: dict[str, tuple[float, int]] = {}

    def log(self, key: str, level: int, msg: str, *args: Any, exc_info: Any = None) -> bool:
        """Log ``msg % args`` unless a line of ``key`` was logged less than ``every`` seconds
        ago (then count it); whether it was logged."""
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last[0] < self._every:
            self._last[key] = (last[0], last[1] + 1)
            return False
        if last is not None and last[1]:
            msg += " (%d more like it in the last %.0f s)"
            args = (*args, last[1], now - last[0])
        self._last[key] = (now, 0)
        self._log.log(level, msg, *args, exc_info=exc_info)
        return True

    def warning(self, key: str, msg: str, *args: Any, exc_info: Any = None) -> bool:
        return self.log(key, logging.WARNING, msg, *args, exc_info=exc_info)

    def failing(self, key: str) -> bool:
        """Whether a line of ``key`` was logged and :meth:`recovered` not called since."""
        return key in self._last

    def recovered(self, key: str, msg: str, *args: Any) -> None:
        """The thing ``key`` logged about works again: one INFO line if anything was logged
        (then the next failure is logged at once again)."""
        if self._last.pop(key, None) is not None:
            self._log.info(msg, *args)


_unreachable = Throttle(logging.getLogger("adapters.sql"))


def unreachable(url: str, err: BaseException, retry: float) -> None:
    """Say (rate-limited) that the database at ``url`` cannot be reached: the adapters keep
    retrying every ``retry`` seconds."""
    _unreachable.warning(
        url,
        "cannot reach the database %s: %r. The workflow keeps retrying (every %.1f s) and "
        "its processes start once it answers: check the URL, the network and that the "
        "database server is running",
        url,
        err,
        retry,
    )


def reachable(url: str) -> None:
    """The database at ``url`` answered (after :func:`unreachable`: one line saying so)."""
    _unreachable.recovered(url, "the database %s answers again", url)
