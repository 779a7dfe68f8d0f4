"""The ASGI application: endpoints, authentication, body limits and JSON errors."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    generate_latest,
)
from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route as Endpoint

from .._adapters import RecordStore
from .._errors import (
    ConcurrentUpdateError,
    RecordNotFoundError,
    RunStateError,
    WorkflowError,
)
from .._record import Record
from .._retry import PausedBy
from .._runstate import RunState
from .._workflow import Workflow
from ..admin import Admin
from ._auth import ADMIN, DISPATCH, READ, Tokens
from ._graphjson import graph_fields
from ._models import (
    Change,
    ControlBody,
    DispatchBatch,
    DispatchResponse,
    Error,
    ErrorBody,
    FieldError,
    Health,
    HistoryEntry,
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
    StatusInfo,
    WorkflowInfo,
    WorkflowList,
)
from ._openapi import openapi
from ._routes import Routes, field_errors
from ._ui import mount_ui

__all__ = ["ApiError", "make_app", "running"]

log = logging.getLogger("workflow.http")

Check = Callable[[], Awaitable[Any]]
Handler = Callable[["Api", Request], Awaitable[Response]]

READY_TIMEOUT = 5.0
CONTROL = ("pause", "resume", "cancel", "delete-data")


class ApiError(Exception):
    """An error answered as ``{"error": {"code", "message"}}`` with ``status``."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        fields: list[FieldError] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.fields = fields
        self.headers = dict(headers or {})

    def response(self) -> JSONResponse:
        body = ErrorBody(error=Error(code=self.code, message=self.message, fields=self.fields))
        return JSONResponse(
            body.model_dump(mode="json", exclude_none=True), self.status, headers=self.headers
        )


def invalid(errors: list[FieldError]) -> ApiError:
    text = "; ".join(f"{e.field}: {e.message}" for e in errors)
    return ApiError(422, "invalid", text, errors)


def _json(model: BaseModel, status: int = 200) -> JSONResponse:
    return JSONResponse(model.model_dump(mode="json"), status)


class _HttpMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "workflow_http_requests",
            "HTTP API requests by route, method and status code",
            ("route", "method", "code"),
            registry=registry,
        )
        self.dispatched = Counter(
            "workflow_http_dispatch_events",
            "Events of POST /dispatch by route name and result",
            ("name", "result"),
            registry=registry,
        )


_METRICS: weakref.WeakKeyDictionary[CollectorRegistry, _HttpMetrics] = weakref.WeakKeyDictionary()


def _metrics_for(registry: CollectorRegistry) -> _HttpMetrics:
    m = _METRICS.get(registry)
    if m is None:
        m = _METRICS[registry] = _HttpMetrics(registry)
    return m


class Api:
    """What the endpoints share (``app.state.api``)."""

    def __init__(
        self,
        admin: Admin,
        tokens: Tokens,
        routes: Routes,
        *,
        max_body_bytes: int,
        max_batch: int,
        registry: CollectorRegistry,
        ready_checks: Mapping[str, Check],
    ) -> None:
        self.admin = admin
        self.tokens = tokens
        self.routes = routes
        self.max_body_bytes = max_body_bytes
        self.max_batch = max_batch
        self.registry = registry
        self.metrics = _metrics_for(registry)
        self.ready_checks = dict(ready_checks)
        self.openapi: dict[str, Any] | None = None

    # -- helpers ------------------------------------------------------------------------

    async def body(self, request: Request, *, required: bool = True) -> Any:
        """The request's JSON body: 413 past ``max_body_bytes`` (by its Content-Length, or
        while it streams in), 415 when it is not JSON, 400 when it does not parse."""
        length = request.headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                raise ApiError(400, "bad_request", "Content-Length is not a number")
            if int(length) > self.max_body_bytes:
                raise self._too_large()
        data = bytearray()
        async for chunk in request.stream():
            data += chunk
            if len(data) > self.max_body_bytes:
                raise self._too_large()
        if not data.strip():
            if required:
                raise ApiError(400, "malformed_json", "the body is empty: send a JSON object")
            return {}
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype and ctype != "application/json" and not ctype.endswith("+json"):
            raise ApiError(415, "unsupported_media_type", "send Content-Type: application/json")
        try:
            return json.loads(data)
        except (ValueError, RecursionError) as err:
            raise ApiError(400, "malformed_json", f"the body is not JSON: {err}") from None

    def _too_large(self) -> ApiError:
        return ApiError(413, "too_large", f"the body is larger than {self.max_body_bytes} bytes")

    def summary(self, r: Record) -> RunSummary:
        return RunSummary(**self._summary_fields(r))

    def _summary_fields(self, r: Record) -> dict[str, Any]:
        m = r.meta
        return {
            "run_id": r.run_id,
            "workflow": r.workflow_name,
            "foreign_id": r.foreign_id,
            "status": r.status,
            "status_name": self.admin.status_name(r),
            "run_state": int(r.run_state),
            "run_state_name": str(r.run_state),
            "version": m.version,
            "attempt": m.attempt,
            "retry_at": m.retry_at,
            "paused_by": m.paused_by,
            "reason": m.run_state_reason,
            "parent_workflow": m.parent_workflow,
            "parent_run_id": m.parent_run_id,
            "created_at": r.created_at,
            "updated_at": r.updated_at,
        }

    def status_value(self, q: RunsQuery) -> int | None:
        if q.status is None:
            return None
        text = q.status.strip()
        if text.lstrip("-").isdigit():
            return int(text)
        wfs = self.admin.workflows
        pool = [wfs[q.workflow]] if q.workflow in wfs else ([] if q.workflow else wfs.values())
        values = {
            int(m) for wf in pool for m in wf._engine.status_type if m.name.lower() == text.lower()
        }
        if len(values) != 1:
            why = "no served workflow has it" if not values else "it means several numbers"
            raise invalid(
                [FieldError(field="status", message=f"{text!r}: {why}; give a number or workflow")]
            )
        return values.pop()

    @staticmethod
    def run_state_value(text: str | None) -> RunState | None:
        if text is None:
            return None
        t = text.strip()
        try:
            if t.isdigit():
                return RunState(int(t))
            return RunState[t.upper().replace(" ", "_").replace("-", "_")]
        except (KeyError, ValueError):
            names = [s.name.lower() for s in RunState if s.valid]
            raise invalid(
                [FieldError(field="run_state", message=f"{t!r} is not one of {names}")]
            ) from None

    @staticmethod
    def paused_by_value(text: str | None, field: str = "paused_by") -> str | None:
        allowed = [str(p) for p in PausedBy]
        if text is not None and text not in allowed:
            raise invalid([FieldError(field=field, message=f"{text!r} is not one of {allowed}")])
        return text

    async def ready(self) -> Ready:
        checks: dict[str, str] = {}
        failed: list[str] = []
        for name, check in self.ready_checks.items():
            try:
                async with asyncio.timeout(READY_TIMEOUT):
                    note = await check()
                checks[name] = note if isinstance(note, str) and note else "ok"
            except Exception as err:
                text = f"{type(err).__name__}: {err}".splitlines()[0][:300]
                if isinstance(err, TimeoutError):
                    text = f"no answer within {READY_TIMEOUT:g}s"
                checks[name] = text
                failed.append(f"{name}: {text}")
        if failed:
            return Ready(
                status="unavailable",
                checks=checks,
                error=Error(code="unavailable", message="; ".join(failed)),
            )
        return Ready(status="ready", checks=checks)


# -- endpoints ---------------------------------------------------------------------------


M = TypeVar("M", bound=BaseModel)


def _parse(model: type[M], data: Any) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise invalid(field_errors(err)) from None


async def healthz(api: Api, request: Request) -> Response:
    return _json(Health(status="ok"))


async def readyz(api: Api, request: Request) -> Response:
    ready = await api.ready()
    return JSONResponse(
        ready.model_dump(mode="json", exclude_none=True), 200 if ready.status == "ready" else 503
    )


async def metrics(api: Api, request: Request) -> Response:
    return Response(generate_latest(api.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi_json(api: Api, request: Request) -> Response:
    if api.openapi is None:
        api.openapi = openapi(api.max_body_bytes, api.max_batch)
    doc = dict(api.openapi)
    root = request.scope.get("root_path", "")
    if root:
        doc["servers"] = [{"url": root}]
    return JSONResponse(doc)


async def list_workflows(api: Api, request: Request) -> Response:
    return _json(
        WorkflowList(workflows=[_workflow_info(api, name) for name in sorted(api.admin.workflows)])
    )


async def show_workflow(api: Api, request: Request) -> Response:
    name = request.path_params["name"]
    if name not in api.admin.workflows:
        raise ApiError(404, "not_found", f"no workflow {name!r} is served here")
    return _json(_workflow_info(api, name))


def _workflow_info(api: Api, name: str) -> WorkflowInfo:
    wf = api.admin.workflows[name]
    return WorkflowInfo(
        name=name,
        statuses=[StatusInfo(value=int(m), name=m.name) for m in wf._engine.status_type],
        mermaid=api.admin.graph(name),
        **graph_fields(wf),
    )


async def list_routes(api: Api, request: Request) -> Response:
    return _json(RouteList(routes=[r.info() for r in api.routes]))


async def list_runs(api: Api, request: Request) -> Response:
    q = _parse(RunsQuery, dict(request.query_params))
    if (q.field is None) != (q.value is None):
        missing = "value" if q.value is None else "field"
        raise invalid([FieldError(field=missing, message="field and value go together")])
    status = api.status_value(q)
    run_state = api.run_state_value(q.run_state)
    paused_by = api.paused_by_value(q.paused_by)
    if paused_by is not None:
        if run_state not in (None, RunState.PAUSED):
            return _json(RunsPage(runs=[], offset=q.offset, limit=q.limit, next_offset=None))
        run_state = RunState.PAUSED
    found = await api.admin.runs(
        workflow=q.workflow,
        status=status,
        run_state=run_state,
        foreign_id=q.foreign_id,
        created_after=q.created_after,
        created_before=q.created_before,
        updated_after=q.updated_after,
        updated_before=q.updated_before,
        object_field=None if q.field is None or q.value is None else (q.field, q.value),
        offset=q.offset,
        limit=q.limit,
        order=q.order,
    )
    # paused_by is filtered here, after the store's page: a page may hold fewer runs
    runs = [r for r in found if paused_by is None or r.meta.paused_by == paused_by]
    return _json(
        RunsPage(
            runs=[api.summary(r) for r in runs],
            offset=q.offset,
            limit=q.limit,
            next_offset=q.offset + q.limit if len(found) == q.limit else None,
        )
    )


async def show_run(api: Api, request: Request) -> Response:
    detail = await api.admin.run(request.path_params["run_id"])
    try:
        obj: Any = json.loads(detail.record.object)
    except ValueError:
        obj = None
    history = [
        HistoryEntry(
            version=v.record.meta.version,
            status=v.record.status,
            status_name=api.admin.status_name(v.record),
            run_state=int(v.record.run_state),
            run_state_name=str(v.record.run_state),
            reason=v.record.meta.run_state_reason,
            updated_at=v.record.updated_at,
            changes=[Change(path=c.path, before=c.before, after=c.after) for c in v.changes],
        )
        for v in detail.history
    ]
    out = RunDetailOut(**api._summary_fields(detail.record), object=obj, history=history)
    return _json(out)


async def control_run(api: Api, request: Request) -> Response:
    run_id = request.path_params["run_id"]
    action = request.path_params["action"]
    if action not in CONTROL:
        raise ApiError(404, "not_found", f"no action {action!r}; one of {list(CONTROL)}")
    body = _parse(ControlBody, await api.body(request, required=False))
    admin = api.admin
    if action == "pause":
        record = await admin.pause(run_id, body.reason)
    elif action == "resume":
        record = await admin.resume(run_id)
    elif action == "cancel":
        record = await admin.cancel(run_id, body.reason)
    else:
        record = await admin.delete_data(run_id, body.reason)
    return _json(api.summary(record))


async def resume_runs(api: Api, request: Request) -> Response:
    body = _parse(ResumeBody, await api.body(request))
    api.paused_by_value(body.paused_by)
    resumed = await api.admin.resume_paused(
        workflow=body.workflow, paused_by=body.paused_by, limit=body.limit
    )
    return _json(ResumeResult(resumed=resumed, count=len(resumed)))


async def purge_runs(api: Api, request: Request) -> Response:
    body = _parse(PurgeBody, await api.body(request))
    n = await api.admin.purge(body.finished_before, batch=body.batch)
    return _json(PurgeResult(purged=n))


async def dispatch(api: Api, request: Request) -> Response:
    batch = _parse(DispatchBatch, await api.body(request))
    if len(batch.events) > api.max_batch:
        raise invalid(
            [FieldError(field="events", message=f"at most {api.max_batch} events a batch")]
        )
    results = await api.routes.dispatch(batch.events)
    for res in results:
        event = batch.events[res.index]
        name = event.get("name") if isinstance(event, dict) else None
        label = name if isinstance(name, str) and name in api.routes else "(unknown)"
        api.metrics.dispatched.labels(label, res.status).inc()
    return _json(DispatchResponse(results=results))


# -- wiring -------------------------------------------------------------------------------


def _endpoint(
    api: Api, path: str, scope: str | None, handler: Handler
) -> Callable[[Request], Awaitable[Response]]:
    """The handler behind its token check, with errors answered as JSON and counted."""

    @functools.wraps(handler)
    async def endpoint(request: Request) -> Response:
        try:
            if scope is not None:
                _authorize(api, request, scope)
            response = await handler(api, request)
        except ApiError as err:
            response = err.response()
        except RecordNotFoundError as err:
            response = ApiError(404, "not_found", str(err)).response()
        except (RunStateError, ConcurrentUpdateError) as err:
            response = ApiError(409, "conflict", str(err)).response()
        except ValidationError as err:
            response = invalid(field_errors(err)).response()
        except ValueError as err:
            response = ApiError(422, "invalid", str(err)).response()
        except WorkflowError as err:
            response = ApiError(501, "not_supported", str(err)).response()
        except Exception:
            log.exception("%s %s failed", request.method, path)
            response = ApiError(500, "internal", "internal error (see the server's log)").response()
        response.headers.setdefault("Cache-Control", "no-store")
        api.metrics.requests.labels(path, request.method, str(response.status_code)).inc()
        return response

    return endpoint


def _authorize(api: Api, request: Request, scope: str) -> None:
    header = request.headers.get("authorization")
    scopes = api.tokens.scopes(header)
    if scopes is None:
        challenge = 'Bearer realm="aioworkflow"'
        if header:
            challenge += ', error="invalid_token"'
        raise ApiError(
            401,
            "unauthorized",
            "a valid bearer token is required (Authorization: Bearer <token>)"
            if not header
            else "the bearer token is not valid",
            headers={"WWW-Authenticate": challenge},
        )
    if scope not in scopes:
        raise ApiError(
            403,
            "forbidden",
            f"this endpoint needs a token with the {scope!r} scope",
            headers={
                "WWW-Authenticate": 'Bearer realm="aioworkflow", error="insufficient_scope", '
                f'scope="{scope}"'
            },
        )


ENDPOINTS: list[tuple[str, str, str | None, Handler]] = [
    ("GET", "/healthz", None, healthz),
    ("GET", "/readyz", READ, readyz),
    ("GET", "/metrics", READ, metrics),
    ("GET", "/openapi.json", READ, openapi_json),
    ("GET", "/api/workflows", READ, list_workflows),
    ("GET", "/api/workflows/{name}", READ, show_workflow),
    ("GET", "/api/routes", READ, list_routes),
    ("GET", "/api/runs", READ, list_runs),
    ("POST", "/api/runs/resume", ADMIN, resume_runs),
    ("POST", "/api/runs/purge", ADMIN, purge_runs),
    ("GET", "/api/runs/{run_id}", READ, show_run),
    ("POST", "/api/runs/{run_id}/{action}", ADMIN, control_run),
    ("POST", "/dispatch", DISPATCH, dispatch),
]


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
    return ApiError(exc.status_code, code, str(exc.detail), headers=exc.headers).response()


@contextlib.asynccontextmanager
async def running(workflows: Iterable[Workflow[Any, Any]]) -> AsyncIterator[None]:
    """Run the workflows (``wf.run()``) inside the block and stop them after it, newest
    first: for an ASGI application's lifespan (``make_app(..., run_workflows=True)`` uses
    it; an application that mounts the API uses it in its own lifespan)."""
    started: list[Workflow[Any, Any]] = []
    try:
        for wf in workflows:
            await wf.run()
            started.append(wf)
        yield
    finally:
        for wf in reversed(started):
            await wf.stop()


def default_checks(store: RecordStore, streamers: Iterable[Any]) -> dict[str, Check]:
    """The readiness checks: the record store answers a one-row list, and each SQL
    streamer's database a ``SELECT 1``. Other streamers (in memory: nothing to reach; Kafka:
    pass a check of your own in ``ready_checks``) are listed as not checked."""

    async def store_check() -> None:
        await store.list("", 0, 1, "asc")

    checks: dict[str, Check] = {"store": store_check}
    seen: set[int] = set()
    for s in streamers:
        if id(s) in seen:
            continue
        seen.add(id(s))
        name = "streamer" if len(seen) == 1 else f"streamer{len(seen)}"
        checks[name] = _streamer_check(s)
    return checks


def _streamer_check(streamer: Any) -> Check:
    engine: Any = getattr(streamer, "engine", None)

    async def sql() -> None:
        async with engine.connect() as conn:
            await conn.exec_driver_sql("SELECT 1")

    async def unchecked() -> str:
        if type(streamer).__module__.endswith(".memstreamer"):
            return "ok (in this process)"
        return f"not checked ({type(streamer).__name__}: pass ready_checks)"

    return sql if engine is not None and hasattr(engine, "connect") else unchecked


def make_app(
    workflows: Sequence[Workflow[Any, Any]],
    *,
    tokens: Mapping[str, Iterable[str]],
    routes: Routes | None = None,
    admin: Admin | None = None,
    max_body_bytes: int = 1_000_000,
    max_batch: int = 500,
    run_workflows: bool = False,
    metrics_registry: CollectorRegistry | None = None,
    ready_checks: Mapping[str, Check] | None = None,
) -> Starlette:
    """The HTTP API over ``workflows`` (all on one record store), as a Starlette
    application: serve it with ``python -m workflow.http --app MODULE:ATTR`` (uvicorn), or
    mount it into an ASGI application of your own (``Mount("/workflow", app)``).

    ``tokens`` maps each bearer token to its scopes (``read``, ``admin`` which implies
    ``read``, ``dispatch``); see :func:`tokens_from_env`. ``routes``: the routing table of
    ``POST /dispatch`` (none: every event is an unknown name). ``admin``: the operations
    object (default ``Admin(store, workflows)``). Bodies above ``max_body_bytes`` are a 413,
    dispatch batches above ``max_batch`` events a 422. ``run_workflows``: the application's
    lifespan runs every workflow and stops them at shutdown (a mounted application's
    lifespan does not run: use :func:`running` in yours). ``metrics_registry``: what
    ``/metrics`` exports (the workflows' registry; default prometheus_client's), where the
    API's own counters are registered too. ``ready_checks``: named async checks for
    ``/readyz`` (default: the store and each SQL streamer)."""
    wfs = list(workflows)
    routes = routes or Routes()
    if admin is None:
        if not wfs:
            raise ValueError("make_app needs the workflows, or an Admin on their store")
        admin = Admin(wfs[0]._engine.store, wfs)
    else:
        for wf in wfs:
            if admin.workflows.get(wf.name) is not wf:
                raise ValueError(f"workflow {wf.name!r} is not registered with the Admin given")
    for r in routes:
        if admin.workflows.get(r.workflow.name) is not r.workflow:
            raise ValueError(f"route {r.name!r}: workflow {r.workflow.name!r} is not served")
    if max_body_bytes < 1024 or max_batch < 1:
        raise ValueError("max_body_bytes must be at least 1024 and max_batch at least 1")
    served = list(admin.workflows.values())
    checks = (
        dict(ready_checks)
        if ready_checks is not None
        else default_checks(admin.store, [wf._engine.streamer for wf in served])
    )
    api = Api(
        admin,
        Tokens(tokens),
        routes,
        max_body_bytes=max_body_bytes,
        max_batch=max_batch,
        registry=metrics_registry or REGISTRY,
        ready_checks=checks,
    )
    lifespan = None
    if run_workflows:

        @contextlib.asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            async with running(served):
                yield

    app = Starlette(
        routes=[
            Endpoint(path, _endpoint(api, path, scope, handler), methods=[method])
            for method, path, scope, handler in ENDPOINTS
        ],
        exception_handlers={HTTPException: _http_error},
        lifespan=lifespan,
    )
    app.state.api = api
    mount_ui(app)
    return app
