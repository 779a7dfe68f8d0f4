"""Logging through the standard library, with the run's context on every line."""

from __future__ import annotations

import logging
from collections.abc import Mapping

__all__ = ["RunLog"]


class RunLog:
    """Writes to a stdlib logger (``workflow`` by default). Context fields (workflow,
    foreign_id, run_id, status, process) go both into the message and into ``extra`` so that
    structured handlers can use them. Debug lines are written only with ``debug=True``."""

    def __init__(self, logger: logging.Logger | None, workflow: str, debug: bool) -> None:
        self.logger = logger or logging.getLogger("workflow")
        self.workflow = workflow
        self.debug_enabled = debug

    def _emit(self, level: int, msg: str, ctx: Mapping[str, object], exc: bool) -> None:
        fields = {"workflow": self.workflow, **ctx}
        text = " ".join(f"{k}={v}" for k, v in fields.items())
        self.logger.log(
            level,
            "%s [%s]",
            msg,
            text,
            exc_info=exc,
            extra={"workflow_context": fields},
            stacklevel=3,
        )

    def debug(self, msg: str, **ctx: object) -> None:
        if self.debug_enabled and self.logger.isEnabledFor(logging.DEBUG):
            self._emit(logging.DEBUG, msg, ctx, False)

    def info(self, msg: str, **ctx: object) -> None:
        if self.logger.isEnabledFor(logging.INFO):
            self._emit(logging.INFO, msg, ctx, False)

    def warning(self, msg: str, **ctx: object) -> None:
        self._emit(logging.WARNING, msg, ctx, False)

    def error(self, msg: str, *, exc: bool = False, **ctx: object) -> None:
        self._emit(logging.ERROR, msg, ctx, exc)
