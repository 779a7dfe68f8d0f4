"""The HTTP API against a real server process (``python -m workflow.http`` serving
tests/procs/http_app.py with uvicorn on a loopback port), on SQLite and PostgreSQL, with
httpx as the client: every endpoint, every authentication failure, body limits, malformed
bodies, validation errors naming the field, a mixed dispatch batch, idempotency, readiness."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from workflow.adapters.sqlschema import create_schema, make_engine
from workflow.http._app import ENDPOINTS

from .conftest import PG_URL
from .support import need_service

ROOT = Path(__file__).resolve().parent.parent
READ = secrets.token_urlsafe(32)
ADMIN = secrets.token_urlsafe(32)
DISPATCH = secrets.token_urlsafe(32)
TOKENS = f"{READ}:read,{ADMIN}:admin,{DISPATCH}:dispatch"
MAX_BODY = 65_536
MAX_BATCH = 50


class Server:
    def __init__(self, proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
        self.proc = proc
        self.url = url
        self.log = log

    def client(self, token: str | None = None, **kw: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, **kw)

    def stop(self, *, clean: bool = True) -> None:
        """SIGTERM; the server stops its workflows and exits (``clean``: nothing logged a
        traceback, i.e. no request failed and no workflow process hit an error)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                code = self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"the server did not stop: {self.log.read_text()}") from None
            # uvicorn shuts down gracefully, then dies of the signal it caught (0 before 0.29)
            log = self.log.read_text()
            assert code in (0, -signal.SIGTERM), log
            assert "Application shutdown complete" in log, log
            assert not clean or "Traceback" not in log, log


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(
    workdir: Path,
    db_url: str,
    *,
    schema: str | None = None,
    app: str = "app",
    extra: tuple[str, ...] = (),
) -> Server:
    """Start the server and wait until ``/healthz`` answers (a port taken meanwhile by
    someone else: another port)."""
    env = {
        **os.environ,
        "AIOWORKFLOW_TOKENS": TOKENS,
        "HTTP_TEST_DB_URL": db_url,
        "HTTP_TEST_MAX_BODY": str(MAX_BODY),
        "HTTP_TEST_MAX_BATCH": str(MAX_BATCH),
    }
    if schema:
        env["HTTP_TEST_DB_SCHEMA"] = schema
    for _ in range(3):
        port = free_port()
        log = workdir / f"server-{port}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [
                    sys.executable, "-m", "workflow.http", "--app", f"tests.procs.http_app:{app}",
                    "--host", "127.0.0.1", "--port", str(port), "--log-level", "info", *extra,
                ],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        server = Server(proc, f"http://127.0.0.1:{port}", log)
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                prefix = "/wf" if app == "mounted" else ""
                if httpx.get(f"{server.url}{prefix}/healthz", timeout=1).status_code == 200:
                    return server
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        if proc.poll() is None:
            server.stop()
            raise AssertionError(f"the server did not come up: {log.read_text()}")
        if b"address already in use" not in log.read_bytes():
            raise AssertionError(f"the server exited: {log.read_text()}")
    raise AssertionError("no free port")


def sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


async def _create(url: str, schema: str | None) -> None:
    if schema:
        admin = create_async_engine(url)
        async with admin.begin() as conn:
            await conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
        await admin.dispose()
        engine = make_engine(url, connect_args={"server_settings": {"search_path": schema}})
    else:
        engine = make_engine(url)
    await create_schema(engine)
    await engine.dispose()


async def _drop(url: str, schema: str) -> None:
    admin = create_async_engine(url)
    async with admin.begin() as conn:
        await conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
    await admin.dispose()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """One server per back end for this module's tests. Each test makes runs of its own
    (fresh foreign ids) and asserts on those, so the order of the tests does not matter."""
    workdir = tmp_path_factory.mktemp(f"http-{request.param}")
    schema = None
    if request.param == "sqlite":
        url = sqlite_url(workdir / "workflow.db")
    else:
        url = need_service(PG_URL, "PostgreSQL tests need WORKFLOW_TEST_POSTGRES_URL")
        schema = f"http_{uuid.uuid4().hex[:12]}"
    asyncio.run(_create(url, schema))
    srv = start_server(workdir, url, schema=schema)
    try:
        yield srv
    finally:
        srv.stop()
        if schema:
            asyncio.run(_drop(url, schema))


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def dispatch(srv: Server, *events: dict[str, Any]) -> list[dict[str, Any]]:
    with srv.client(DISPATCH) as c:
        r = c.post("/dispatch", json={"events": list(events)})
    assert r.status_code == 200, r.text
    results: list[dict[str, Any]] = r.json()["results"]
    assert [x["index"] for x in results] == list(range(len(events)))
    return results


def wait_run(
    srv: Server, run_id: str, ok: Callable[[dict[str, Any]], bool], timeout: float = 20
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    with srv.client(READ) as c:
        while True:
            run: dict[str, Any] = c.get(f"/api/runs/{run_id}").json()
            if ok(run):
                return run
            assert time.monotonic() < deadline, f"run never got there: {run}"
            time.sleep(0.05)


def error_of(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    err: dict[str, Any] = r.json()["error"]
    assert err["code"] == code, err
    assert err["message"]
    return err


def fields(err: dict[str, Any]) -> set[str]:
    return {f["field"] for f in err.get("fields", [])}


# -- health, metrics, documents -----------------------------------------------------------


def test_healthz_needs_no_token_and_readyz_checks_the_database(server: Server) -> None:
    with server.client() as c:
        r = c.get("/healthz")
        assert r.status_code == 200 and r.json() == {"status": "ok"}
        assert "set-cookie" not in r.headers
    with server.client(READ) as c:
        r = c.get("/readyz")
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "ready", "checks": {"store": "ok", "streamer": "ok"}}


@pytest.mark.parametrize(("method", "path", "scope"), [e[:3] for e in ENDPOINTS if e[2]])
def test_every_endpoint_refuses_a_missing_or_bad_token_and_the_wrong_scope(
    server: Server, method: str, path: str, scope: str
) -> None:
    url = path.format(run_id="no-such-run", action="pause", name="orders")
    wrong = {"read": DISPATCH, "admin": READ, "dispatch": ADMIN}[scope]
    with server.client() as c:
        r = c.request(method, url, json={})
        error_of(r, 401, "unauthorized")
        assert r.headers["www-authenticate"] == 'Bearer realm="aioworkflow"'
        for header in (
            f"Bearer {READ[:-1]}x",  # one character off
            f"Bearer {secrets.token_urlsafe(32)}",
            f"Basic {READ}",
            "Bearer",
            f"{READ}",
        ):
            r = c.request(method, url, json={}, headers={"Authorization": header})
            error_of(r, 401, "unauthorized")
            assert "invalid_token" in r.headers["www-authenticate"]
        r = c.request(method, url, json={}, headers={"Authorization": f"Bearer {wrong}"})
        err = error_of(r, 403, "forbidden")
        assert scope in err["message"]
        assert f'scope="{scope}"' in r.headers["www-authenticate"]


def test_metrics_export_the_engine_and_the_api(server: Server) -> None:
    dispatch(server, {"name": "order.placed", "foreign_id": uid("m"), "payload": {"item": "pen"}})
    with server.client(READ) as c:
        r = c.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'workflow_http_dispatch_events_total{name="order.placed",result="accepted"}' in text
    assert 'workflow_http_requests_total{code="200",method="POST",route="/dispatch"}' in text
    assert "workflow_process_states" in text  # the engine's, on the same registry


def test_openapi_describes_every_endpoint(server: Server) -> None:
    with server.client(READ) as c:
        doc = c.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.1")
    for method, path, scope, _ in ENDPOINTS:
        paths = (
            [path.replace("{action}", a) for a in ("pause", "resume", "cancel", "delete-data")]
            if "{action}" in path
            else [path]
        )
        for p in paths:
            op = doc["paths"][p][method.lower()]
            assert op.get("x-scope") == scope, p
            assert "200" in op["responses"]
    schemas = doc["components"]["schemas"]
    assert {"DispatchEvent", "RunDetailOut", "RunsPage", "ErrorBody"} <= set(schemas)
    params = {p["name"] for p in doc["paths"]["/api/runs"]["get"]["parameters"]}
    assert {"workflow", "status", "run_state", "field", "value", "paused_by", "limit"} <= params


def test_workflows_graphs_and_routes(server: Server) -> None:
    with server.client(READ) as c:
        wfs = c.get("/api/workflows").json()["workflows"]
        assert [w["name"] for w in wfs] == ["notices", "orders", "payments"]
        orders = next(w for w in wfs if w["name"] == "orders")
        assert {"value": 2, "name": "DONE"} in orders["statuses"]
        assert "stateDiagram-v2" in orders["mermaid"]
        assert c.get("/api/workflows/payments").json()["name"] == "payments"
        error_of(c.get("/api/workflows/nope"), 404, "not_found")
        routes = {r["name"]: r for r in c.get("/api/routes").json()["routes"]}
    assert set(routes) == {"order.placed", "payment.started", "payment.settled", "notice.send"}
    assert routes["payment.settled"]["kind"] == "callback"
    assert routes["payment.settled"]["status"] == "AWAITING"
    assert routes["notice.send"]["delayed_start"] == "SCHEDULED"
    assert routes["notice.send"]["payload_schema"]["required"] == ["to", "text"]


def test_unknown_paths_and_methods_are_json_errors(server: Server) -> None:
    with server.client(ADMIN) as c:
        error_of(c.get("/api/nothing"), 404, "not_found")
        error_of(c.delete("/api/runs"), 405, "method_not_allowed")
        error_of(c.post("/api/runs/x/explode", json={}), 404, "not_found")


# -- dispatch -----------------------------------------------------------------------------


def test_a_mixed_dispatch_batch_gets_one_result_per_event(server: Server) -> None:
    order, pay, busy, notice = uid("o"), uid("p"), uid("busy"), uid("n")
    key = uid("key")
    dispatch(server, {"name": "payment.started", "foreign_id": busy})  # unfinished: busy
    events: list[Any] = [
        {"name": "order.placed", "foreign_id": order, "payload": {"item": "book", "qty": 2},
         "idempotency_key": key},
        {"name": "order.placed", "foreign_id": order, "payload": {"item": "book", "qty": 2},
         "idempotency_key": key},  # the same key again: nothing new
        {"name": "fax.send", "foreign_id": uid("f")},
        {"name": "order.placed"},  # no foreign id
        {"name": "order.placed", "foreign_id": uid("o"), "payload": {"qty": 0}},
        {"name": "order.placed", "foreign_id": uid("o"), "colour": "red"},
        {"name": "order.placed", "foreign_id": uid("o"), "delay": 60},  # no delayed start
        {"name": "notice.send", "foreign_id": uid("n"), "payload": {"to": "x", "text": "y"},
         "delay": -1},
        "not an object",
        {"name": "payment.started", "foreign_id": pay, "payload": {"amount": 500}},
        {"name": "payment.settled", "foreign_id": pay, "payload": {"ref": "tx-1"}},
        {"name": "payment.settled", "foreign_id": pay, "payload": {"ref": "tx-1"}},  # moved on
        {"name": "payment.settled", "foreign_id": uid("nobody"), "payload": {"ref": "tx-2"}},
        {"name": "payment.settled", "foreign_id": pay, "payload": {"no_ref": 1}},
        {"name": "payment.started", "foreign_id": busy},
        {"name": "notice.send", "foreign_id": notice, "payload": {"to": "ann", "text": "hi"},
         "delay": "PT1S"},
    ]  # fmt: skip
    results = dispatch(server, *events)
    status = [r["status"] for r in results]
    assert status == [
        "accepted", "duplicate", "unknown_name", "invalid", "invalid", "invalid", "invalid",
        "invalid", "invalid", "accepted", "accepted", "rejected", "rejected", "invalid",
        "rejected", "accepted",
    ]  # fmt: skip
    assert results[0]["run_id"] == results[1]["run_id"]
    assert results[9]["run_id"] == results[10]["run_id"]
    errors = [r["error"] or "" for r in results]
    assert errors[0] == "" and errors[1] == ""
    assert "fax.send" in errors[2]
    assert errors[3].startswith("foreign_id: ")
    assert errors[4].startswith("payload.qty: ")
    assert errors[5].startswith("colour: ")
    assert errors[6].startswith("delay: ") and "takes no delay" in errors[6]
    assert errors[7].startswith("delay: ")
    assert "not waiting at AWAITING" in errors[11]
    assert "no run" in errors[12]
    assert errors[13].startswith("payload.ref: ")
    assert "unfinished" in errors[14] or "in progress" in errors[14].lower()
    # what the accepted events did
    done = wait_run(server, results[0]["run_id"], lambda r: r["status_name"] == "DONE")
    assert done["object"]["note"] == "packed 2 book"
    paid = wait_run(server, results[9]["run_id"], lambda r: r["status_name"] == "SETTLED")
    assert paid["object"] == {"amount": 500, "settled_ref": "tx-1"}
    sent = wait_run(server, results[15]["run_id"], lambda r: r["status_name"] == "SENT")
    assert [h["status_name"] for h in sent["history"]] == ["SCHEDULED", "READY", "SENT"]
    assert sent["object"]["delay_s"] == 1.0
    waited = datetime.fromisoformat(sent["history"][1]["updated_at"]) - datetime.fromisoformat(
        sent["created_at"]
    )
    assert waited >= timedelta(seconds=0.9)


def test_a_duplicate_key_is_accepted_once_even_when_sent_at_once(server: Server) -> None:
    key = uid("key")

    def send(i: int) -> dict[str, Any]:
        event = {"name": "order.placed", "foreign_id": uid(f"dup{i}"), "idempotency_key": key}
        return dispatch(server, event)[0]

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(send, range(6)))
    assert sorted(r["status"] for r in results) == ["accepted"] + ["duplicate"] * 5
    assert len({r["run_id"] for r in results}) == 1
    again = dispatch(
        server, {"name": "order.placed", "foreign_id": uid("x"), "idempotency_key": key}
    )
    assert again[0]["status"] == "duplicate" and again[0]["run_id"] == results[0]["run_id"]


def test_dispatch_body_and_batch_limits(server: Server) -> None:
    with server.client(DISPATCH) as c:
        big = {
            "events": [
                {"name": "order.placed", "foreign_id": "x", "payload": {"item": "a" * MAX_BODY}}
            ]
        }
        error_of(c.post("/dispatch", json=big), 413, "too_large")

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams in
            yield b'{"events": ['
            for _ in range(MAX_BODY // 1000 + 2):
                yield b'{"name": "order.placed", "foreign_id": "' + b"y" * 950 + b'"},'
            yield b"]}"

        r = c.post("/dispatch", content=chunks(), headers={"Content-Type": "application/json"})
        error_of(r, 413, "too_large")
        many = {"events": [{"name": "nope", "foreign_id": str(i)} for i in range(MAX_BATCH + 1)]}
        err = error_of(c.post("/dispatch", json=many), 422, "invalid")
        assert fields(err) == {"events"}
        ok = {"events": [{"name": "nope", "foreign_id": str(i)} for i in range(MAX_BATCH)]}
        r = c.post("/dispatch", json=ok)
        assert r.status_code == 200 and len(r.json()["results"]) == MAX_BATCH


def test_malformed_bodies(server: Server) -> None:
    with server.client(ADMIN) as c:
        for path in ("/api/runs/purge", "/api/runs/resume"):
            h = {"Content-Type": "application/json"}
            error_of(c.post(path, content=b'{"limit": ', headers=h), 400, "malformed_json")
            error_of(c.post(path, content=b"", headers=h), 400, "malformed_json")
            error_of(c.post(path, content=b"\xff\xfe", headers=h), 400, "malformed_json")
            r = c.post(path, content=b"limit=3", headers={"Content-Type": "text/plain"})
            error_of(r, 415, "unsupported_media_type")
            err = error_of(c.post(path, json=[1, 2]), 422, "invalid")
            assert fields(err) == {"(body)"}
        r = c.post("/api/runs/x/pause", content=b"{", headers={"Content-Type": "application/json"})
        error_of(r, 400, "malformed_json")
    with server.client(DISPATCH) as c:
        err = error_of(c.post("/dispatch", json={"event": []}), 422, "invalid")
        assert fields(err) == {"events", "event"}
        err = error_of(c.post("/dispatch", json={"events": "x"}), 422, "invalid")
        assert fields(err) == {"events"}


# -- runs ---------------------------------------------------------------------------------


def test_list_runs_with_every_filter_and_paging(server: Server) -> None:
    before = datetime.now(UTC) - timedelta(seconds=1)
    tier = uid("tier")
    ids = [
        r["run_id"]
        for r in dispatch(
            server,
            *(
                {"name": "order.placed", "foreign_id": uid("list"),
                 "payload": {"item": "cup", "customer": {"tier": tier}}}
                for _ in range(5)
            ),
        )
    ]  # fmt: skip
    for rid in ids:
        wait_run(server, rid, lambda r: r["run_state_name"] == "Completed")
    after = datetime.now(UTC) + timedelta(seconds=1)
    mine = {"field": "customer.tier", "value": tier}

    def runs(**q: Any) -> dict[str, Any]:
        with server.client(READ) as c:
            r = c.get("/api/runs", params={**mine, **q})
        assert r.status_code == 200, r.text
        page: dict[str, Any] = r.json()
        return page

    page = runs()
    assert [r["run_id"] for r in page["runs"]] == ids[::-1]  # newest first
    assert page["next_offset"] is None
    first = page["runs"][0]
    assert first["workflow"] == "orders" and first["status_name"] == "DONE"
    assert set(first) == {
        "run_id", "workflow", "foreign_id", "status", "status_name", "run_state",
        "run_state_name", "version", "attempt", "retry_at", "paused_by", "reason",
        "parent_workflow", "parent_run_id", "created_at", "updated_at",
    }  # fmt: skip
    assert [r["run_id"] for r in runs(order="asc")["runs"]] == ids
    p1 = runs(limit=2, order="asc")
    assert [r["run_id"] for r in p1["runs"]] == ids[:2] and p1["next_offset"] == 2
    p3 = runs(limit=2, offset=4, order="asc")
    assert [r["run_id"] for r in p3["runs"]] == ids[4:] and p3["next_offset"] is None
    for q in (
        {"workflow": "orders"},
        {"status": "2"},
        {"status": "DONE"},
        {"status": "done", "workflow": "orders"},
        {"run_state": "completed"},
        {"run_state": "5"},
        {"created_after": before.isoformat(), "created_before": after.isoformat()},
        {"updated_after": before.isoformat(), "updated_before": after.isoformat()},
    ):
        assert len(runs(**q)["runs"]) == 5, q
    for q in (
        {"workflow": "payments"},
        {"status": "1"},
        {"run_state": "paused"},
        {"created_after": after.isoformat()},
        {"updated_before": before.isoformat()},
        {"paused_by": "retries exhausted"},
        {"paused_by": "operator", "run_state": "running"},
    ):
        assert runs(**q)["runs"] == [], q
    fid = page["runs"][2]["foreign_id"]
    assert [r["foreign_id"] for r in runs(foreign_id=fid)["runs"]] == [fid]


def test_bad_run_queries_name_the_field(server: Server) -> None:
    with server.client(READ) as c:
        for query, field in (
            ({"limit": "0"}, "limit"),
            ({"limit": "1001"}, "limit"),
            ({"offset": "-1"}, "offset"),
            ({"limit": "ten"}, "limit"),
            ({"order": "sideways"}, "order"),
            ({"colour": "red"}, "colour"),
            ({"created_after": "2024-01-01T00:00:00"}, "created_after"),  # no timezone
            ({"updated_before": "yesterday"}, "updated_before"),
            ({"run_state": "sleeping"}, "run_state"),
            ({"status": "NOWHERE"}, "status"),
            ({"status": "UNKNOWN"}, "status"),  # a name in several workflows: fine (all 0)
            ({"field": "note"}, "value"),
            ({"value": "x"}, "field"),
            ({"paused_by": "tired"}, "paused_by"),
        ):
            r = c.get("/api/runs", params=query)
            if query == {"status": "UNKNOWN"}:
                assert r.status_code == 200, r.text
                continue
            err = error_of(r, 422, "invalid")
            assert fields(err) == {field}, (query, err)
            assert err["message"].startswith(f"{field}: ")


def test_show_a_run_with_its_history_and_changes(server: Server) -> None:
    (res,) = dispatch(
        server, {"name": "order.placed", "foreign_id": uid("show"), "payload": {"item": "lamp"}}
    )
    run = wait_run(server, res["run_id"], lambda r: r["status_name"] == "DONE")
    assert run["object"] == {"item": "lamp", "qty": 1, "note": "packed 1 lamp", "customer": {}}
    assert [h["version"] for h in run["history"]] == [1, 2]
    first, second = run["history"]
    assert first["status_name"] == "STARTED" and first["run_state_name"] == "Initiated"
    assert {"path": "item", "before": None, "after": "lamp"} in first["changes"]
    assert second["changes"] == [{"path": "note", "before": "", "after": "packed 1 lamp"}]
    assert second["run_state_name"] == "Completed"
    with server.client(READ) as c:
        error_of(c.get(f"/api/runs/{uuid.uuid4()}"), 404, "not_found")


def test_pause_resume_cancel_and_delete_a_run(server: Server) -> None:
    (res,) = dispatch(server, {"name": "payment.started", "foreign_id": uid("ctl")})
    rid = res["run_id"]
    with server.client(ADMIN) as c:
        r = c.post(f"/api/runs/{rid}/pause", json={"reason": "looking into it"})
        assert r.status_code == 200, r.text
        assert r.json()["run_state_name"] == "Paused" and r.json()["reason"] == "looking into it"
        assert r.json()["paused_by"] == "operator"
        error_of(c.post(f"/api/runs/{rid}/pause"), 409, "conflict")
        assert c.post(f"/api/runs/{rid}/resume").json()["run_state_name"] == "Running"
        error_of(c.post(f"/api/runs/{rid}/resume"), 409, "conflict")
        error_of(c.post(f"/api/runs/{rid}/delete-data"), 409, "conflict")  # not finished
        err = error_of(c.post(f"/api/runs/{rid}/cancel", json={"reason": 5}), 422, "invalid")
        assert fields(err) == {"reason"}
        err = error_of(c.post(f"/api/runs/{rid}/cancel", json={"why": "x"}), 422, "invalid")
        assert fields(err) == {"why"}
        r = c.post(f"/api/runs/{rid}/cancel", json={"reason": "customer left"})
        assert r.json()["run_state_name"] == "Cancelled"
        r = c.post(f"/api/runs/{rid}/delete-data", json={"reason": "GDPR request"})
        assert r.json()["run_state_name"] == "Requested Data Deleted"
        error_of(c.post(f"/api/runs/{uuid.uuid4()}/pause"), 404, "not_found")
    run = wait_run(server, rid, lambda r: r["run_state_name"] == "Data Deleted")
    reasons = [h["reason"] for h in run["history"]]
    assert "looking into it" in reasons and "customer left" in reasons


def test_bulk_resume_replays_a_dead_letter(server: Server) -> None:
    results = dispatch(
        server,
        *({"name": "order.placed", "foreign_id": uid("dead"), "payload": {"item": "broken"}}
          for _ in range(3)),
    )  # fmt: skip
    ids = [r["run_id"] for r in results]
    for rid in ids:
        wait_run(server, rid, lambda r: r["paused_by"] == "retries exhausted")
    with server.client(ADMIN) as c:
        err = error_of(c.post("/api/runs/resume", json={"workflow": "orders"}), 422, "invalid")
        assert fields(err) == {"limit"}
        body = {"workflow": "orders", "paused_by": "tired", "limit": 5}
        err = error_of(c.post("/api/runs/resume", json=body), 422, "invalid")
        assert fields(err) == {"paused_by"}
        body = {"workflow": "orders", "paused_by": "retries exhausted", "limit": 2}
        r = c.post("/api/runs/resume", json=body)
        assert r.status_code == 200, r.text
        assert r.json()["count"] == 2 and set(r.json()["resumed"]) <= set(ids)
        body["limit"] = 100
        rest = c.post("/api/runs/resume", json=body).json()["resumed"]
        assert set(ids) - set(r.json()["resumed"]) <= set(rest)
    for rid in ids:  # the warehouse is still down: each is a dead letter again
        run = wait_run(
            server, rid, lambda r: r["paused_by"] == "retries exhausted" and r["version"] >= 4
        )
        assert [h["run_state_name"] for h in run["history"]][-2:] == ["Running", "Paused"]


def test_purge_finished_runs(server: Server) -> None:
    old = [r["run_id"] for r in dispatch(
        server, *({"name": "order.placed", "foreign_id": uid("old")} for _ in range(3))
    )]  # fmt: skip
    for rid in old:
        wait_run(server, rid, lambda r: r["run_state_name"] == "Completed")
    (waiting,) = dispatch(server, {"name": "payment.started", "foreign_id": uid("wait")})
    cutoff = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    with server.client(ADMIN) as c:
        err = error_of(
            c.post("/api/runs/purge", json={"finished_before": "2024-01-01T00:00:00"}),
            422,
            "invalid",
        )
        assert fields(err) == {"finished_before"}
        err = error_of(
            c.post("/api/runs/purge", json={"finished_before": cutoff, "batch": 0}), 422, "invalid"
        )
        assert fields(err) == {"batch"}
        r = c.post("/api/runs/purge", json={"finished_before": cutoff, "batch": 2})
        assert r.status_code == 200, r.text
        assert r.json()["purged"] >= 3
        for rid in old:
            error_of(c.get(f"/api/runs/{rid}"), 404, "not_found")
        assert c.get(f"/api/runs/{waiting['run_id']}").status_code == 200


# -- readiness failures and mounting --------------------------------------------------------


def test_readyz_fails_when_the_sqlite_database_is_unreachable(tmp_path: Path) -> None:
    srv = start_server(tmp_path, sqlite_url(tmp_path / "missing-dir" / "workflow.db"))
    try:
        with srv.client(READ) as c:
            r = c.get("/readyz")
            assert c.get("/healthz").status_code == 200  # the process is up
        assert r.status_code == 503, r.text
        body = r.json()
        assert body["status"] == "unavailable" and body["error"]["code"] == "unavailable"
        assert body["checks"]["store"] != "ok" and body["checks"]["streamer"] != "ok"
    finally:
        srv.stop(clean=False)


def test_readyz_fails_when_postgres_is_unreachable(tmp_path: Path) -> None:
    url = f"postgresql+asyncpg://nobody@127.0.0.1:{free_port()}/nothing"  # nothing listens
    srv = start_server(tmp_path, url)
    try:
        with srv.client(READ) as c:
            r = c.get("/readyz")
        assert r.status_code == 503, r.text
        assert "store" in r.json()["error"]["message"]
    finally:
        srv.stop(clean=False)


def test_mounted_into_an_application_behind_a_path_prefix(tmp_path: Path) -> None:
    """``tests.procs.http_app:mounted``: the user's Starlette application mounts the API at
    /wf and runs the workflows in its own lifespan; uvicorn's ``--root-path /edge`` says a
    proxy serves it all under /edge."""
    db = tmp_path / "workflow.db"
    asyncio.run(_create(sqlite_url(db), None))
    srv = start_server(tmp_path, sqlite_url(db), app="mounted", extra=("--root-path", "/edge"))
    try:
        with srv.client(DISPATCH) as c:
            r = c.post(
                "/wf/dispatch", json={"events": [{"name": "order.placed", "foreign_id": "m1"}]}
            )
            assert r.status_code == 200, r.text
            rid = r.json()["results"][0]["run_id"]
        with srv.client(READ) as c:
            deadline = time.monotonic() + 20
            while c.get(f"/wf/api/runs/{rid}").json()["status_name"] != "DONE":
                assert time.monotonic() < deadline
                time.sleep(0.05)
            doc = c.get("/wf/openapi.json").json()
            assert doc["servers"] == [{"url": "/edge/wf"}]
    finally:
        srv.stop()


def test_the_served_json_is_json(server: Server) -> None:
    """No NaN, no bytes: every body parses with a strict parser."""
    with server.client(ADMIN) as c:
        for path in ("/api/runs", "/api/workflows", "/api/routes", "/openapi.json", "/readyz"):
            json.loads(c.get(path).content, parse_constant=lambda s: pytest.fail(s))
