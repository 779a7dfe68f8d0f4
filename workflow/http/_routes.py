"""The dispatch routing table: named events to a workflow's trigger or callback."""

from __future__ import annotations

import enum
import json
import logging
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

from pydantic import TypeAdapter, ValidationError

from .._errors import RecordNotFoundError, WorkflowInProgressError
from .._workflow import Workflow
from ._models import DispatchEvent, DispatchResult, FieldError, Outcome, RouteInfo

__all__ = ["Route", "Routes", "field_errors"]

log = logging.getLogger("workflow.http")

Build = Callable[[Any, timedelta], Any]
"""``build(payload, delay)``: the run's initial object from the validated payload (``None``
when the event has none) and the event's delay (zero when it has none)."""


@dataclass(frozen=True, slots=True)
class Route:
    """One name of the routing table (see :class:`Routes`)."""

    name: str
    kind: Literal["trigger", "callback"]
    workflow: Workflow[Any, Any]
    payload: TypeAdapter[Any] | None
    status: enum.IntEnum | None = None
    start: enum.IntEnum | None = None
    delayed_start: enum.IntEnum | None = None
    build: Build | None = None

    def info(self) -> RouteInfo:
        schema: dict[str, Any] = {}
        if self.payload is not None:
            try:
                schema = self.payload.json_schema()
            except Exception:  # a type pydantic cannot describe still validates
                schema = {}
        return RouteInfo(
            name=self.name,
            kind=self.kind,
            workflow=self.workflow.name,
            status=None if self.status is None else self.status.name,
            start=None if self.start is None else self.start.name,
            delayed_start=None if self.delayed_start is None else self.delayed_start.name,
            payload_schema=schema,
        )


class Routes:
    """A routing table for ``POST /dispatch`` (and for :meth:`dispatch` in any code): each
    event's ``name`` picks a workflow's trigger or callback.

        routes = Routes()
        routes.trigger("email.send", email_wf, model=EmailPayload)
        routes.trigger("notify", notify_wf, delayed_start=Status.SCHEDULED, build=with_delay)
        routes.callback("payment.settled", payment_wf, Status.AWAITING_SETTLEMENT)
    """

    def __init__(self) -> None:
        self._routes: dict[str, Route] = {}

    def __iter__(self) -> Iterator[Route]:
        return iter(self._routes.values())

    def __len__(self) -> int:
        return len(self._routes)

    def __contains__(self, name: object) -> bool:
        return name in self._routes

    def get(self, name: str) -> Route | None:
        return self._routes.get(name)

    def trigger(
        self,
        name: str,
        workflow: Workflow[Any, Any],
        *,
        model: Any = None,
        start: enum.IntEnum | None = None,
        delayed_start: enum.IntEnum | None = None,
        build: Build | None = None,
    ) -> Routes:
        """Events called ``name`` trigger a run of ``workflow``: the event's foreign id and
        idempotency key are the run's, its payload (validated by ``model``, by default the
        workflow's object type) the initial object, or ``build(payload, delay)`` makes the
        object from it. A run starts at ``start`` (default: the workflow's start).

        ``delayed_start``: a status whose timeout moves the run on (``Builder.add_timeout``);
        an event with a ``delay`` starts there, and its timer function reads the delay from
        the object that ``build`` made, so a delay survives restarts like any timer. Without
        ``delayed_start`` an event with a delay is invalid."""
        eng = workflow._engine
        if start is not None:
            start = self._start(workflow, start, "start")
        if delayed_start is not None:
            delayed_start = self._start(workflow, delayed_start, "delayed_start")
            if build is None:
                raise ValueError(
                    f"route {name!r}: delayed_start needs build(payload, delay) to put the "
                    "delay into the object, where the status's timer function reads it"
                )
        if build is not None and not callable(build):
            raise ValueError(f"route {name!r}: build must be callable")
        adapter = TypeAdapter(eng.object_type if model is None else model)
        self._add(Route(name, "trigger", workflow, adapter, None, start, delayed_start, build))
        return self

    def callback(
        self,
        name: str,
        workflow: Workflow[Any, Any],
        status: enum.IntEnum,
        *,
        model: Any = None,
    ) -> Routes:
        """Events called ``name`` run ``workflow``'s callbacks at ``status`` on the latest
        run of the event's foreign id, with the payload as JSON bytes (validated by ``model``
        first, when given)."""
        st = workflow._engine.status(status)
        if not workflow._engine.callbacks.get(int(st)):
            raise ValueError(
                f"route {name!r}: workflow {workflow.name!r} has no callback at {st!r}"
            )
        adapter = None if model is None else TypeAdapter(model)
        self._add(Route(name, "callback", workflow, adapter, st))
        return self

    def workflows(self) -> list[Workflow[Any, Any]]:
        """The routed workflows, each once."""
        out: dict[int, Workflow[Any, Any]] = {}
        for r in self._routes.values():
            out.setdefault(id(r.workflow), r.workflow)
        return list(out.values())

    @staticmethod
    def _start(workflow: Workflow[Any, Any], status: enum.IntEnum, what: str) -> enum.IntEnum:
        eng = workflow._engine
        st: enum.IntEnum = eng.status(status, what)
        if eng.graph.is_terminal(int(st)):
            raise ValueError(f"{what} {st!r} is a terminal status of {workflow.name!r}")
        return st

    def _add(self, route: Route) -> None:
        if not isinstance(route.name, str) or not route.name:
            raise ValueError("a route's name is a non-empty str")
        if route.name in self._routes:
            raise ValueError(f"route {route.name!r} is declared twice")
        self._routes[route.name] = route

    # -- dispatching ----------------------------------------------------------------------

    async def dispatch(self, events: Sequence[Any]) -> list[DispatchResult]:
        """Handle each event (a ``DispatchEvent`` or its JSON form) in order, each on its
        own: one result per event, never all-or-nothing."""
        return [await self.dispatch_one(i, e) for i, e in enumerate(events)]

    async def dispatch_one(self, index: int, raw: Any) -> DispatchResult:
        try:
            event = raw if isinstance(raw, DispatchEvent) else DispatchEvent.model_validate(raw)
        except ValidationError as err:
            return _result(index, "invalid", error=_describe(field_errors(err)))
        route = self._routes.get(event.name)
        if route is None:
            return _result(index, "unknown_name", error=f"no route is called {event.name!r}")
        try:
            if route.kind == "trigger":
                return await self._trigger(index, route, event)
            return await self._callback(index, route, event)
        except ValidationError as err:
            return _result(index, "invalid", error=_describe(field_errors(err, "payload")))
        except ValueError as err:
            return _result(index, "invalid", error=str(err))
        except Exception as err:
            log.exception("dispatch of %r (foreign id %r) failed", event.name, event.foreign_id)
            return _result(index, "error", error=f"{type(err).__name__}: {err}")

    async def _trigger(self, index: int, route: Route, event: DispatchEvent) -> DispatchResult:
        delay = event.delay or timedelta(0)
        start = route.start
        if delay > timedelta(0):
            if route.delayed_start is None:
                raise ValueError(f"delay: route {route.name!r} takes no delay")
            start = route.delayed_start
        value = None
        if event.payload is not None:
            assert route.payload is not None
            value = route.payload.validate_python(event.payload)
        if route.build is not None:
            value = route.build(value, delay)
        # A mark only this trigger writes: with an idempotency key, the run found under it
        # is this event's when it carries the mark, an earlier event's otherwise.
        mark = f"POST /dispatch {route.name} {uuid.uuid4().hex}"
        try:
            run_id = await route.workflow._engine.trigger(
                event.foreign_id,
                start,
                value,
                trace_origin=mark,
                idempotency_key=event.idempotency_key,
            )
        except WorkflowInProgressError as err:
            return _result(index, "rejected", error=str(err))
        if event.idempotency_key is None:
            return _result(index, "accepted", run_id)
        try:
            record = await route.workflow._engine.store.lookup(run_id)
        except RecordNotFoundError:  # already purged: it was not this event's
            return _result(index, "duplicate", run_id)
        mine = record.meta.trace_origin == mark
        return _result(index, "accepted" if mine else "duplicate", run_id)

    async def _callback(self, index: int, route: Route, event: DispatchEvent) -> DispatchResult:
        if event.delay:
            raise ValueError(f"delay: route {route.name!r} is a callback, which cannot wait")
        assert route.status is not None
        data = b""
        if event.payload is not None:
            if route.payload is None:
                data = json.dumps(event.payload, separators=(",", ":")).encode()
            else:
                data = route.payload.dump_json(route.payload.validate_python(event.payload))
        wf = route.workflow
        try:
            changed = await wf.callback(event.foreign_id, route.status, data)
        except RecordNotFoundError:
            why = f"no run of {wf.name!r} has foreign id {event.foreign_id!r}"
            return _result(index, "rejected", error=why)
        if not changed:
            return _result(
                index,
                "rejected",
                error=f"the latest run of {event.foreign_id!r} is not waiting at "
                f"{route.status.name} (nothing changed)",
            )
        record = await wf._engine.store.latest(wf.name, event.foreign_id)
        return _result(index, "accepted", record.run_id)


def _result(
    index: int, status: Outcome, run_id: str | None = None, *, error: str | None = None
) -> DispatchResult:
    return DispatchResult(index=index, status=status, run_id=run_id, error=error)


def field_errors(err: ValidationError, prefix: str = "") -> list[FieldError]:
    """Pydantic's errors as ``field: message`` pairs (the input values are not repeated)."""
    out = []
    for e in err.errors(include_input=False, include_url=False):
        loc = ".".join(str(p) for p in e["loc"])
        where = ".".join(p for p in (prefix, loc) if p) or "(body)"
        out.append(FieldError(field=where, message=e["msg"]))
    return out


def _describe(errors: list[FieldError]) -> str:
    return "; ".join(f"{e.field}: {e.message}" for e in errors)
