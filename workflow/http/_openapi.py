"""The OpenAPI 3.1 document, written here from the pydantic models of ``_models`` (their
``model_json_schema``): no generator, no framework layer; a test checks that it names every
endpoint the application serves."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from ._models import (
    ControlBody,
    DispatchBatch,
    DispatchEvent,
    DispatchResponse,
    ErrorBody,
    Health,
    PurgeBody,
    PurgeResult,
    Ready,
    ResumeBody,
    ResumeResult,
    RouteList,
    RunDetailOut,
    RunsPage,
    RunsQuery,
    RunSummary,
    WorkflowInfo,
    WorkflowList,
)

__all__ = ["openapi"]

VERSION = "1"
REF = "#/components/schemas/{model}"

_REQUESTS: list[type[BaseModel]] = [
    ControlBody,
    ResumeBody,
    PurgeBody,
    DispatchBatch,
    DispatchEvent,
]
_RESPONSES: list[type[BaseModel]] = [
    ErrorBody,
    Health,
    Ready,
    WorkflowList,
    WorkflowInfo,
    RouteList,
    RunsPage,
    RunSummary,
    RunDetailOut,
    ResumeResult,
    PurgeResult,
    DispatchResponse,
]

Method = Literal["get", "post"]


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def _error(description: str) -> dict[str, Any]:
    content = {"application/json": {"schema": _ref(ErrorBody)}}
    return {"description": description, "content": content}


def _operation(
    summary: str,
    scope: str | None,
    response: type[BaseModel] | None,
    *,
    body: type[BaseModel] | None = None,
    body_required: bool = True,
    params: list[dict[str, Any]] | None = None,
    errors: dict[str, str] | None = None,
    description: str = "",
    tag: str = "runs",
) -> dict[str, Any]:
    ok: dict[str, Any] = {"description": "OK"}
    if response is not None:
        ok["content"] = {"application/json": {"schema": _ref(response)}}
    responses: dict[str, Any] = {"200": ok}
    if scope is not None:
        responses["401"] = _error("No token, or a token that is not configured")
        responses["403"] = _error(f"The token lacks the {scope!r} scope")
    if body is not None:
        responses["400"] = _error("The body is not JSON")
        responses["413"] = _error("The body is larger than the limit")
        responses["415"] = _error("The body is not application/json")
    if body is not None or params:
        responses["422"] = _error("A field does not validate (error.fields names it)")
    for code, text in (errors or {}).items():
        responses[code] = _error(text)
    op: dict[str, Any] = {"summary": summary, "tags": [tag], "responses": responses}
    if description:
        op["description"] = description
    op["security"] = [] if scope is None else [{"bearer": [scope]}]
    if scope is not None:
        op["x-scope"] = scope
    if body is not None:
        op["requestBody"] = {
            "required": body_required,
            "content": {"application/json": {"schema": _ref(body)}},
        }
    if params:
        op["parameters"] = params
    return op


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema()
    required = set(schema.get("required", ()))
    out = []
    for name, prop in schema["properties"].items():
        prop = dict(prop)
        description = prop.pop("description", None)
        prop.pop("title", None)
        p: dict[str, Any] = {"name": name, "in": "query", "required": name in required}
        p["schema"] = prop
        if description:
            p["description"] = description
        out.append(p)
    return out


def _path_param(name: str, description: str = "") -> dict[str, Any]:
    p: dict[str, Any] = {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
    if description:
        p["description"] = description
    return p


def openapi(max_body_bytes: int, max_batch: int) -> dict[str, Any]:
    """The document ``GET /openapi.json`` serves."""
    modes: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        *((m, "validation") for m in _REQUESTS),
        *((m, "serialization") for m in _RESPONSES),
    ]
    _, defs = models_json_schema(modes, ref_template=REF)
    run = [_path_param("run_id")]
    not_found = {"404": "No run has that id"}
    paths: dict[str, dict[Method, Any]] = {
        "/healthz": {
            "get": _operation("The process is up", None, Health, tag="health"),
        },
        "/readyz": {
            "get": _operation(
                "The database and the event streamer are reachable",
                "read",
                Ready,
                errors={"503": "A check failed (the body is a Ready with error and checks)"},
                tag="health",
            )
        },
        "/metrics": {
            "get": _operation(
                "Prometheus metrics (text exposition format)", "read", None, tag="health"
            )
        },
        "/openapi.json": {
            "get": _operation("This document", "read", None, tag="health"),
        },
        "/api/workflows": {
            "get": _operation(
                "The served workflows: statuses and Mermaid graphs",
                "read",
                WorkflowList,
                tag="workflows",
            )
        },
        "/api/workflows/{name}": {
            "get": {
                **_operation(
                    "One workflow",
                    "read",
                    WorkflowInfo,
                    errors={"404": "Not served here"},
                    tag="workflows",
                ),
                "parameters": [_path_param("name")],
            }
        },
        "/api/routes": {
            "get": _operation(
                "The dispatch routing table, with each route's payload schema",
                "read",
                RouteList,
                tag="dispatch",
            )
        },
        "/api/runs": {
            "get": _operation(
                "A page of runs, newest first by default",
                "read",
                RunsPage,
                params=_query_parameters(RunsQuery),
                description="`next_offset` is null on the last page. Times are ISO 8601 with "
                "a timezone (percent-encode a `+`, or use `Z`).",
            )
        },
        "/api/runs/{run_id}": {
            "get": {
                **_operation(
                    "A run with its object, history and what each version changed",
                    "read",
                    RunDetailOut,
                    errors=not_found,
                ),
                "parameters": run,
            }
        },
        "/api/runs/resume": {
            "post": _operation(
                "Resume paused runs in bulk (replay a dead letter)",
                "admin",
                ResumeResult,
                body=ResumeBody,
            )
        },
        "/api/runs/purge": {
            "post": _operation(
                "Delete runs that finished before a time, with their history",
                "admin",
                PurgeResult,
                body=PurgeBody,
                errors={"501": "The record store cannot purge"},
            )
        },
        "/dispatch": {
            "post": _operation(
                "Route a batch of named events to triggers and callbacks",
                "dispatch",
                DispatchResponse,
                body=DispatchBatch,
                description=f"At most {max_batch} events. Each event is validated and handled "
                "on its own (one result each, in order, never all-or-nothing); see "
                "DispatchEvent for an event's fields and GET /api/routes for the names.",
                tag="dispatch",
            )
        },
    }
    for action, text in (
        ("pause", "Pause a run"),
        ("resume", "Resume a paused run"),
        ("cancel", "Cancel a run (and its unfinished children)"),
        ("delete-data", "Request the deletion of a finished run's data"),
    ):
        paths[f"/api/runs/{{run_id}}/{action}"] = {
            "post": {
                **_operation(
                    text,
                    "admin",
                    RunSummary,
                    body=ControlBody,
                    body_required=False,
                    errors={**not_found, "409": "The run's state does not allow it"},
                ),
                "parameters": run,
            }
        }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "aioworkflow HTTP API",
            "version": VERSION,
            "description": "Runs, their operations, and event dispatch. Every endpoint but "
            "/healthz needs `Authorization: Bearer <token>`; scopes: read, admin (implies "
            f"read), dispatch. Bodies are JSON, at most {max_body_bytes} bytes. Errors are "
            '`{"error": {"code", "message", "fields"?}}`.',
        },
        "paths": paths,
        "components": {
            "schemas": defs["$defs"],
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
