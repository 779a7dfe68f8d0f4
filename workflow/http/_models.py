"""The JSON shapes of the HTTP API, as pydantic models: they validate what comes in (a 422
names the field) and shape what goes out, and the OpenAPI document is made from them."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "Change",
    "ControlBody",
    "DispatchBatch",
    "DispatchEvent",
    "DispatchResponse",
    "DispatchResult",
    "Error",
    "ErrorBody",
    "FieldError",
    "GraphEdge",
    "GraphNode",
    "Health",
    "HistoryEntry",
    "PurgeBody",
    "PurgeResult",
    "Ready",
    "ResumeBody",
    "ResumeResult",
    "RouteInfo",
    "RouteList",
    "RunDetailOut",
    "RunSummary",
    "RunsPage",
    "RunsQuery",
    "StatusInfo",
    "WorkflowInfo",
    "WorkflowList",
]

MAX_KEY = 255
"""The longest idempotency key (the engine's limit)."""
MAX_TEXT = 1000
"""The longest reason, name or foreign id accepted."""
MAX_DELAY = timedelta(days=366)


class _In(BaseModel):
    """A request shape: unknown fields are refused (a typo is a 422, not ignored)."""

    model_config = ConfigDict(extra="forbid")


# -- errors -------------------------------------------------------------------------------


class FieldError(BaseModel):
    field: str = Field(description="Where: dotted path, e.g. `events.3.payload.to`.")
    message: str


class Error(BaseModel):
    code: str = Field(
        description="unauthorized, forbidden, not_found, method_not_allowed, conflict, "
        "invalid, malformed_json, unsupported_media_type, too_large, not_supported, "
        "unavailable, internal"
    )
    message: str
    fields: list[FieldError] | None = None


class ErrorBody(BaseModel):
    error: Error


# -- runs ---------------------------------------------------------------------------------


class RunsQuery(_In):
    """The query string of ``GET /api/runs``."""

    workflow: str = Field("", max_length=MAX_TEXT, description="A workflow's name; all if empty.")
    status: str | None = Field(
        None,
        max_length=MAX_TEXT,
        description="A status number or name (a name is resolved with `workflow`, or among "
        "the served workflows when it means one number in all of them).",
    )
    run_state: str | None = Field(
        None,
        max_length=64,
        description="A run state number or name (`paused`, `Running`, `data_deleted`, ...).",
    )
    foreign_id: str | None = Field(None, max_length=MAX_TEXT)
    created_after: AwareDatetime | None = None
    created_before: AwareDatetime | None = None
    updated_after: AwareDatetime | None = None
    updated_before: AwareDatetime | None = None
    field: str | None = Field(
        None, max_length=MAX_TEXT, description="A dotted path into the run's object (JSON)."
    )
    value: str | None = Field(
        None, max_length=MAX_TEXT, description="The value `field` must have (as text)."
    )
    paused_by: str | None = Field(
        None, description="Paused runs paused for this reason (`retries exhausted`, ...)."
    )
    offset: int = Field(0, ge=0)
    limit: int = Field(25, ge=1, le=1000)
    order: Literal["asc", "desc"] = "desc"


class RunSummary(BaseModel):
    run_id: str
    workflow: str
    foreign_id: str
    status: int
    status_name: str
    run_state: int
    run_state_name: str
    version: int
    attempt: int
    retry_at: datetime | None
    paused_by: str
    reason: str
    parent_workflow: str
    parent_run_id: str
    created_at: datetime
    updated_at: datetime


class RunsPage(BaseModel):
    runs: list[RunSummary]
    offset: int
    limit: int
    next_offset: int | None = Field(description="The offset of the next page; null at the end.")


class Change(BaseModel):
    path: str
    before: Any
    after: Any


class HistoryEntry(BaseModel):
    version: int
    status: int
    status_name: str
    run_state: int
    run_state_name: str
    reason: str
    updated_at: datetime
    changes: list[Change]


class RunDetailOut(RunSummary):
    object: Any = Field(description="The run's object (parsed JSON; null if not JSON).")
    history: list[HistoryEntry]


class ControlBody(_In):
    reason: str = Field("", max_length=MAX_TEXT)


class ResumeBody(_In):
    workflow: str = Field("", max_length=MAX_TEXT)
    paused_by: str | None = None
    limit: int = Field(ge=1, le=10_000)


class ResumeResult(BaseModel):
    resumed: list[str]
    count: int


class PurgeBody(_In):
    finished_before: AwareDatetime
    batch: int = Field(500, ge=1, le=10_000)


class PurgeResult(BaseModel):
    purged: int


# -- workflows and routes -----------------------------------------------------------------


class StatusInfo(BaseModel):
    value: int
    name: str


class GraphNode(BaseModel):
    value: int
    name: str
    start: bool = Field(description="The workflow's default start status.")
    terminal: bool = Field(description="No transition leaves it.")


class GraphEdge(BaseModel):
    source: int
    target: int
    label: str = Field(
        default="",
        description="Empty for a declared transition; a saga's arrows: `compensate (fn)`, "
        "`retries exhausted`.",
    )


class WorkflowInfo(BaseModel):
    name: str
    statuses: list[StatusInfo]
    mermaid: str
    nodes: list[GraphNode] = Field(
        description="The statuses of the graph (the same graph as `mermaid`)."
    )
    edges: list[GraphEdge] = Field(description="The graph's arrows but `[*]`'s, as in `mermaid`.")


class WorkflowList(BaseModel):
    workflows: list[WorkflowInfo]


class RouteInfo(BaseModel):
    name: str
    kind: Literal["trigger", "callback"]
    workflow: str
    status: str | None = Field(None, description="A callback's status.")
    start: str | None = Field(None, description="A trigger's start status.")
    delayed_start: str | None = Field(None, description="Where a delayed trigger starts.")
    payload_schema: dict[str, Any]


class RouteList(BaseModel):
    routes: list[RouteInfo]


# -- dispatch -----------------------------------------------------------------------------


class DispatchEvent(_In):
    name: str = Field(min_length=1, max_length=MAX_TEXT, description="The route's name.")
    foreign_id: str = Field(min_length=1, max_length=MAX_TEXT)
    payload: Any = Field(
        None,
        description="Validated by the route's model: a trigger's initial object, a "
        "callback's payload (JSON). Null: the object's defaults, an empty callback payload.",
    )
    delay: timedelta | None = Field(
        None,
        description="Start later: seconds (a number) or an ISO 8601 duration (`PT10M`). "
        "Triggers only, on a route with a delayed start.",
    )
    idempotency_key: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_KEY,
        description="A trigger with a key already used (by this workflow) starts nothing: "
        "`duplicate`, with the first run's id.",
    )

    @field_validator("delay")
    @classmethod
    def _delay_range(cls, v: timedelta | None) -> timedelta | None:
        if v is not None and not timedelta(0) <= v <= MAX_DELAY:
            raise ValueError(f"must be between 0 and {MAX_DELAY.days} days")
        return v


class DispatchBatch(_In):
    events: list[Any] = Field(
        description="The events (each a DispatchEvent). Each one is validated and handled on "
        "its own: a bad event fails alone."
    )


Outcome = Literal["accepted", "duplicate", "unknown_name", "invalid", "rejected", "error"]


class DispatchResult(BaseModel):
    index: int
    status: Outcome = Field(
        description="accepted: a run was started or a callback applied; duplicate: the "
        "idempotency key was used before (run_id is that run); unknown_name: no route has the "
        "name; invalid: the event or its payload does not validate (see error); rejected: the "
        "engine refused (the foreign id has an unfinished run, or no run waits for the "
        "callback); error: an unexpected failure (e.g. the database), safe to send again."
    )
    run_id: str | None = None
    error: str | None = None


class DispatchResponse(BaseModel):
    results: list[DispatchResult]


# -- health -------------------------------------------------------------------------------


class Health(BaseModel):
    status: Literal["ok"]


class Ready(BaseModel):
    status: Literal["ready", "unavailable"]
    checks: dict[str, str]
    error: Error | None = None
