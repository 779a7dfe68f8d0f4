"""The HTTP API's parts in process: token parsing and comparison, the routing table's
declarations, ``make_app``'s checks, ``Routes.dispatch`` without HTTP, and the layering rule
of ``workflow/http`` (the endpoints themselves are tested on a real server, test_http.py)."""

from __future__ import annotations

import ast
import enum
import hmac
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from workflow import Builder, Run, Workflow
from workflow.adapters.memrecordstore import MemRecordStore
from workflow.http import Routes, _auth, make_app, tokens_from_env
from workflow.http._auth import Tokens
from workflow.testing import FakeClock

from .support import Obj, Status, build
from .test_layers import OPTIONAL, _function_imports, _top

TOKEN = "t" * 32


class Wait(enum.IntEnum):
    UNKNOWN = 0
    WAITING = 1
    DONE = 2


async def step(run: Run[Obj, Status]) -> Status:
    return Status.DONE


async def answered(run: Run[Obj, Wait], payload: bytes) -> Wait:
    run.object.note = payload.decode()
    return Wait.DONE


def workflows(
    clock: FakeClock, registry: CollectorRegistry
) -> tuple[Workflow[Obj, Status], Workflow[Obj, Wait]]:
    """Two workflows on one record store (each with its own memory streamer)."""
    store = MemRecordStore()
    a = Builder[Obj, Status]("a")
    a.add_step(Status.STARTED, step, Status.DONE)
    b = Builder[Obj, Wait]("b")
    b.add_callback(Wait.WAITING, answered, Wait.DONE)
    return build(a, clock, registry, store=store), build(b, clock, registry, store=store)  # type: ignore[arg-type]


# -- tokens -------------------------------------------------------------------------------


def test_tokens_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T", f" {'a' * 20}:read , {'b' * 20}:admin+dispatch,")
    assert tokens_from_env("T") == {"a" * 20: {"read"}, "b" * 20: {"admin", "dispatch"}}
    for bad in ("", "   ", f"{'a' * 20}", f"{'a' * 20}:", "short:read", f"{'a' * 20}:root"):
        monkeypatch.setenv("T", bad)
        with pytest.raises(ValueError, match=r"^T") as err:
            tokens_from_env("T")
        assert "a" * 20 not in str(err.value)  # a secret is never repeated
    monkeypatch.delenv("T")
    with pytest.raises(ValueError, match="unset"):
        tokens_from_env("T")


def test_scopes_admin_implies_read_and_every_token_is_compared(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tokens = Tokens({"a" * 20: {"admin"}, "b" * 20: ["dispatch"], "c" * 20: "read"})
    assert tokens.scopes(f"Bearer {'a' * 20}") == {"admin", "read"}
    assert tokens.scopes(f"bearer   {'b' * 20} ") == {"dispatch"}
    assert tokens.scopes(f"Bearer {'c' * 20}") == {"read"}
    for header in (
        None,
        "",
        "Bearer",
        f"Basic {'a' * 20}",
        f"Bearer {'a' * 19}",
        f"Bearer {'a' * 21}",
    ):
        assert tokens.scopes(header) is None
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(_auth.hmac, "compare_digest", counting)
    tokens.scopes(f"Bearer {'a' * 20}")  # the first one matches: the others are compared too
    tokens.scopes("Bearer nothing-like-any-token")
    assert len(calls) == 6
    assert {len(a) for a, _ in calls} == {32} and {len(b) for _, b in calls} == {32}


@pytest.mark.parametrize(
    "tokens",
    [{}, {"short": {"read"}}, {"a" * 20: {"root"}}, {"a" * 20: set()}, {"a b" * 10: {"read"}}],
)
def test_bad_token_configurations_are_refused(tokens: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Tokens(tokens)


# -- routes and make_app ------------------------------------------------------------------


def test_route_declarations_are_checked(clock: FakeClock, registry: CollectorRegistry) -> None:
    a, b = workflows(clock, registry)
    routes = Routes().trigger("go", a).callback("answer", b, Wait.WAITING)
    assert "go" in routes and len(routes) == 2 and routes.workflows() == [a, b]
    with pytest.raises(ValueError, match="twice"):
        routes.trigger("go", a)
    with pytest.raises(ValueError, match="no callback"):
        Routes().callback("x", a, Status.STARTED)
    with pytest.raises(ValueError, match="terminal"):
        Routes().trigger("x", a, start=Status.DONE)
    with pytest.raises(ValueError, match="build"):
        Routes().trigger("x", a, delayed_start=Status.STARTED)
    with pytest.raises(ValueError):
        Routes().trigger("x", a, start=Wait.WAITING)  # another enum
    with pytest.raises(ValueError, match="non-empty"):
        Routes().trigger("", a)


def test_make_app_checks_its_arguments(clock: FakeClock, registry: CollectorRegistry) -> None:
    a, b = workflows(clock, registry)
    tokens = {TOKEN: {"read"}}
    with pytest.raises(ValueError, match="not served"):
        make_app([a], tokens=tokens, routes=Routes().trigger("x", b), metrics_registry=registry)
    with pytest.raises(ValueError, match="no tokens"):
        make_app([a], tokens={})
    with pytest.raises(ValueError, match="workflows"):
        make_app([], tokens=tokens)
    with pytest.raises(ValueError, match="max_body_bytes"):
        make_app([a], tokens=tokens, max_body_bytes=10)


async def test_in_process_on_memory(clock: FakeClock, registry: CollectorRegistry) -> None:
    """The application in process (httpx's ASGI transport), on the memory adapters."""
    a, b = workflows(clock, registry)
    routes = Routes().trigger("go", a).trigger("wait", b).callback("answer", b, Wait.WAITING)
    app = make_app(
        [a, b], tokens={TOKEN: {"read", "dispatch"}}, routes=routes, metrics_registry=registry
    )
    transport = httpx.ASGITransport(app=app)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://t", headers=headers) as c:
        r = await c.get("/readyz")
        inside = "ok (in this process)"
        assert r.json()["checks"] == {"store": "ok", "streamer": inside, "streamer2": inside}
        body = {
            "events": [
                {"name": "wait", "foreign_id": "f1", "payload": {"count": 2}},
                {"name": "answer", "foreign_id": "f1", "payload": {"any": ["json"]}},
                {"name": "go", "foreign_id": "f2", "payload": {"count": "many"}},
            ]
        }
        results = (await c.post("/dispatch", json=body)).json()["results"]
        assert [x["status"] for x in results] == ["accepted", "accepted", "invalid"]
        assert results[2]["error"].startswith("payload.count: ")
        run = (await c.get(f"/api/runs/{results[0]['run_id']}")).json()
        assert run["status_name"] == "DONE" and run["object"]["note"] == '{"any":["json"]}'


async def test_routes_dispatch_without_http(clock: FakeClock, registry: CollectorRegistry) -> None:
    class Delayed(BaseModel):
        count: int

    a, _ = workflows(clock, registry)
    seen: list[timedelta] = []

    def make(p: Delayed | None, delay: timedelta) -> Obj:
        seen.append(delay)
        return Obj(count=p.count if p else -1)

    routes = Routes().trigger("later", a, model=Delayed, delayed_start=Status.STARTED, build=make)
    results = await routes.dispatch(
        [
            {"name": "later", "foreign_id": "x", "payload": {"count": 3}, "delay": 90},
            {"name": "later", "foreign_id": "y", "delay": "PT2M", "idempotency_key": "k"},
            {"name": "later", "foreign_id": "z", "idempotency_key": "k"},
        ]
    )
    assert [r.status for r in results] == ["accepted", "accepted", "duplicate"]
    assert seen == [timedelta(seconds=90), timedelta(minutes=2), timedelta(0)]
    assert (await a.lookup(results[0].run_id or "")).object.count == 3


def test_workflow_http_has_no_import_inside_a_function() -> None:
    """tests/test_layers.py's rule, for this subpackage too."""
    for path in sorted((Path(__file__).parent.parent / "workflow" / "http").glob("*.py")):
        imports = _function_imports(ast.parse(path.read_text()))
        assert [ast.unparse(n) for n in imports if _top(n) not in OPTIONAL] == [], path.name
