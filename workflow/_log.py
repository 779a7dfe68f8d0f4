"""Logging through the standard library, with the run's context on every line."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeAlias

from ._tracing import current_ids

if TYPE_CHECKING:
    from ._record import TypedRecord

__all__ = ["RunLog", "RunLogger"]

_SysExcInfo: TypeAlias = tuple[type[BaseException], BaseException, TracebackType | None]
_ExcInfo: TypeAlias = bool | _SysExcInfo | tuple[None, None, None] | BaseException | None


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
        ids = current_ids()
        if ids is not None:
            fields["trace_id"], fields["span_id"] = ids
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


class RunLogger(logging.LoggerAdapter[logging.Logger]):
    """``run.logger``: logs about one run, from the user's step, callback or timeout.

    Every record gets the run's context, like the engine's own lines: appended to the
    message (``charged [workflow=orders foreign_id=o-1 run_id=… status=CREATED attempt=1]``)
    and in ``record.workflow_context`` (a dict) for structured handlers. The fields are
    ``workflow``, ``foreign_id``, ``run_id``, ``status`` (its name), ``attempt``, and, while
    a span is current (tracing), ``trace_id`` and ``span_id`` (hex, as exporters show them).
    The logger is the workflow's (``build(logger=...)``, default ``workflow``).
    """

    def __init__(self, logger: logging.Logger, run: TypedRecord[Any, Any]) -> None:
        super().__init__(logger, {})
        self.run = run

    def context(self) -> dict[str, object]:
        """The run's fields, as of now (the attempt of a timeout's retry included)."""
        run = self.run
        status = run.status
        fields: dict[str, object] = {
            "workflow": run.workflow_name,
            "foreign_id": run.foreign_id,
            "run_id": run.run_id,
            "status": getattr(status, "name", status),
            "attempt": getattr(run, "attempt", run.meta.attempt),
        }
        ids = current_ids()
        if ids is not None:
            fields["trace_id"], fields["span_id"] = ids
        return fields

    def log(
        self,
        level: int,
        msg: object,
        *args: object,
        exc_info: _ExcInfo = None,
        stack_info: bool = False,
        stacklevel: int = 1,
        extra: Mapping[str, object] | None = None,
        **kwargs: object,
    ) -> None:
        if not self.isEnabledFor(level):
            return
        fields = self.context()
        text = " ".join(f"{k}={v}" for k, v in fields.items())
        if args:  # the message is %-formatted with them: keep the context's % literal
            text = text.replace("%", "%%")
        self.logger.log(
            level,
            f"{msg} [{text}]",
            *args,
            exc_info=exc_info,
            stack_info=stack_info,
            stacklevel=stacklevel + 1,  # the caller's line, not this one
            extra={**(extra or {}), "workflow_context": fields},
        )
