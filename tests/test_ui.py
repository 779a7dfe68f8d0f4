"""The web UI (workflow/http/ui, served at /ui/) against a real server process
(``python -m workflow.http`` serving tests/procs/ui_app.py on a loopback port, on a SQLite
file), in a real headless browser: Debian's chromium (/usr/bin/chromium) driven by Playwright
for Python (never ``playwright install``: no browser is downloaded).

The browser tests skip when /usr/bin/chromium or playwright is missing, and fail under
``CI=true`` (.ci/run installs chromium like PostgreSQL). Each saves screenshots under its
``tmp_path`` (the last one as the test ends, passed or failed). The runs each test makes have
fresh foreign ids, so the tests do not depend on each other or on their order. What the UI
did is checked in the page and in the database (read with ``Admin`` on the store)."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import json
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from workflow import Builder, RetryPolicy, Run, mermaid
from workflow.adapters.memrecordstore import MemRecordStore
from workflow.adapters.sqlschema import create_schema, make_engine
from workflow.adapters.sqlstore import SQLRecordStore
from workflow.admin import Admin, RunDetail
from workflow.http import make_app
from workflow.http._graphjson import graph_fields
from workflow.http._ui import HEADERS, UI_DIR
from workflow.testing import FakeClock

from .support import Obj, build, need_service
from .test_http import (
    ADMIN,
    DISPATCH,
    READ,
    TOKENS,
    Server,
    dispatch,
    free_port,
    sqlite_url,
    uid,
    wait_run,
)

try:
    from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright
except ImportError:  # skipped below (failed in CI)
    sync_playwright = None

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
# Without the background-networking flags Chromium's own connections (updates, sync,
# metrics) are attempted, and refused on a closed network.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 15_000
DASH = "\u2013"  # in the UI's "Runs 1-10"
T = TypeVar("T")


# -- the server --------------------------------------------------------------------------


@dataclass
class UiServer:
    server: Server
    db_url: str
    down: Path

    @property
    def url(self) -> str:
        return self.server.url


def in_thread(fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine on an event loop of its own, in another thread: Playwright's sync API
    keeps a loop running in this one."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(fn())).result()


def start_ui_server(workdir: Path, db_url: str, down: Path) -> Server:
    env = {
        **os.environ,
        "AIOWORKFLOW_TOKENS": TOKENS,
        "UI_TEST_DB_URL": db_url,
        "UI_TEST_DOWN_DIR": str(down),
    }
    for _ in range(3):
        port = free_port()
        log = workdir / f"server-{port}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [
                    sys.executable, "-m", "workflow.http", "--app", "tests.procs.ui_app:app",
                    "--host", "127.0.0.1", "--port", str(port), "--log-level", "info",
                ],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        server = Server(proc, f"http://127.0.0.1:{port}", log)
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{server.url}/healthz", timeout=1).status_code == 200:
                    return server
            time.sleep(0.05)
        if proc.poll() is None:
            server.stop()
            raise AssertionError(f"the server did not come up: {log.read_text()}")
        if b"address already in use" not in log.read_bytes():
            raise AssertionError(f"the server exited: {log.read_text()}")
    raise AssertionError("no free port")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UiServer]:
    workdir = tmp_path_factory.mktemp("ui")
    down = workdir / "down"
    down.mkdir()
    url = sqlite_url(workdir / "workflow.db")

    async def create() -> None:
        engine = make_engine(url)
        await create_schema(engine)
        await engine.dispose()

    in_thread(create)
    srv = start_ui_server(workdir, url, down)
    try:
        yield UiServer(srv, url, down)
    finally:
        srv.stop()


def stored(srv: UiServer, run_id: str) -> RunDetail:
    """The run as the database has it, with its history (``Admin`` on the store)."""

    async def read() -> RunDetail:
        engine = make_engine(srv.db_url)
        try:
            return await Admin(SQLRecordStore(engine)).run(run_id)
        finally:
            await engine.dispose()

    return in_thread(read)


def wait_stored(
    srv: UiServer, run_id: str, ok: Callable[[RunDetail], bool], timeout: float = 20
) -> RunDetail:
    deadline = time.monotonic() + timeout
    while True:
        detail = stored(srv, run_id)
        if ok(detail):
            return detail
        assert time.monotonic() < deadline, f"never got there: {detail.record}"
        time.sleep(0.1)


def marker(down: Path, foreign_id: str) -> Path:
    """tests/procs/ui_app.py's: while this file exists, packing the order fails."""
    return down / hashlib.sha256(foreign_id.encode()).hexdigest()


def orders(srv: UiServer, *payloads: dict[str, Any], prefix: str = "o") -> list[tuple[str, str]]:
    """Start orders: ``[(run_id, foreign_id)]``."""
    fids = [uid(prefix) for _ in payloads]
    events = [
        {"name": "order.placed", "foreign_id": f, "payload": p}
        for f, p in zip(fids, payloads, strict=True)
    ]
    return [(r["run_id"], f) for r, f in zip(dispatch(srv.server, *events), fids, strict=True)]


def dead_letters(srv: UiServer, n: int, item: str = "lamp") -> list[tuple[str, str]]:
    """``n`` orders paused by exhausted retries (their packing fails while their marker
    file exists)."""
    fids = [uid("dead") for _ in range(n)]
    for f in fids:
        marker(srv.down, f).touch()
    events = [{"name": "order.placed", "foreign_id": f, "payload": {"item": item}} for f in fids]
    out = [(r["run_id"], f) for r, f in zip(dispatch(srv.server, *events), fids, strict=True)]
    for rid, _ in out:
        wait_run(srv.server, rid, lambda r: r["paused_by"] == "retries exhausted")
    return out


def heal(srv: UiServer, foreign_id: str) -> None:
    marker(srv.down, foreign_id).unlink()


def completed(srv: UiServer, run_id: str) -> dict[str, Any]:
    return wait_run(srv.server, run_id, lambda r: r["run_state_name"] == "Completed")


# -- without a browser: what is served ----------------------------------------------------


def test_the_ui_is_served_from_the_package_with_a_strict_csp(server: UiServer) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        r = c.get("/ui/")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        for name, value in HEADERS.items():
            assert r.headers[name.lower()] == value
        assert r.headers["content-security-policy"].startswith("default-src 'self'")
        assert "set-cookie" not in r.headers
        html = r.text
        for path, ctype in (
            ("/ui/app.js", "javascript"),
            ("/ui/app.css", "text/css"),
            ("/ui/favicon.svg", "image/svg+xml"),
        ):
            asset = c.get(path)
            assert asset.status_code == 200 and ctype in asset.headers["content-type"], path
            assert asset.headers["content-security-policy"] == HEADERS["Content-Security-Policy"]
        r = c.get("/ui")
        assert r.status_code in (307, 308) and r.headers["location"].endswith("/ui/")
        r = c.get("/")
        assert r.status_code == 307 and r.headers["location"] == "ui/"
        r = c.get("/ui/nothing.js")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    # every reference in the page is relative: nothing from another origin, no inline code
    refs = re.findall(r'(?:src|href)="([^"]*)"', html)
    assert sorted(refs) == ["#/dead", "#/runs", "#/runs", "#/workflows", "app.css", "app.js",
                            "favicon.svg"]  # fmt: skip
    assert "<script>" not in html and "style=" not in html
    assert not re.search(r"\son\w+\s*=", html)  # no inline event handler


def test_the_ui_files_write_no_markup_from_data_and_fetch_nothing_from_elsewhere() -> None:
    """The rule app.js lives by, checked on its text: values reach the page as text
    (textContent, text nodes, setAttribute), never as markup; the only absolute URL in the
    assets is the SVG namespace."""
    files = sorted(p.name for p in UI_DIR.iterdir())
    assert files == ["app.css", "app.js", "favicon.svg", "index.html"]
    js = (UI_DIR / "app.js").read_text()
    for pattern in (
        r"\.innerHTML\b", r"\.outerHTML\b", r"insertAdjacentHTML\s*\(", r"document\.write\s*\(",
        r"\beval\s*\(", r"new\s+Function\b", r"setTimeout\s*\(\s*['\"`]", r"javascript:",
    ):  # fmt: skip
        assert not re.search(pattern, js), pattern
    for path in UI_DIR.iterdir():
        urls = set(re.findall(r"\b\w+://[^\s\"'`)]*", path.read_text()))
        assert urls <= {"http://www.w3.org/2000/svg"}, (path.name, urls)
        assert "@import" not in path.read_text() and "url(http" not in path.read_text()


class Saga(enum.IntEnum):
    UNKNOWN = 0
    ASKED = 1
    HELD = 2
    PAID = 3
    DONE = 4
    UNDONE = 5
    AGAIN = 6


async def _step(run: Run[Obj, Saga]) -> Saga:
    return Saga.HELD


async def _undo(run: Run[Obj, Saga]) -> None:
    return None


def test_the_graph_json_has_the_arrows_of_the_mermaid_text(clock: FakeClock, registry: Any) -> None:
    """``nodes``/``edges`` of /api/workflows: the same graph as ``mermaid()``, arrow for
    arrow, labels included (a cycle and a saga's compensations)."""
    b = Builder[Obj, Saga]("saga")
    b.add_step(Saga.ASKED, _step, Saga.HELD).compensate_with(_undo)
    b.add_step(Saga.HELD, _step, Saga.PAID, Saga.AGAIN).compensate_with(_undo)
    b.add_step(Saga.AGAIN, _step, Saga.HELD)
    b.add_step(Saga.PAID, _step, Saga.DONE).with_options(
        retry=RetryPolicy(max_attempts=2, on_exhausted="compensate")
    )
    b.compensate_to(Saga.UNDONE)
    wf = build(b, clock, registry)  # type: ignore[arg-type]
    got = graph_fields(wf)
    nodes = {n.value: n for n in got["nodes"]}
    assert sorted(nodes) == [1, 2, 3, 4, 5, 6]
    assert [n for n in nodes.values() if n.start] == [nodes[1]] and nodes[1].name == "ASKED"
    assert {v for v, n in nodes.items() if n.terminal} == {4, 5}
    arrows = []
    for line in mermaid(wf).splitlines():
        m = re.fullmatch(r"\t(\d+) --> (\d+)(?:: (.*))?", line)
        if m:
            arrows.append((int(m[1]), int(m[2]), m[3] or ""))
    assert [(e.source, e.target, e.label) for e in got["edges"]] == arrows
    assert ("", "compensate (_undo)", "retries exhausted") == tuple(
        sorted({e.label for e in got["edges"]})
    )


def test_the_ui_under_a_mount_finds_the_api_beside_it(clock: FakeClock, registry: Any) -> None:
    """Mounted at /wf, the page is /wf/ui/ and its API /wf/api/... (app.js resolves "../"
    from the page); / of the mount redirects to ui/ relative to it. (Run in a thread of its
    own: this module's browser keeps an event loop running in this one.)"""
    b = Builder[Obj, Saga]("one")
    b.add_step(Saga.ASKED, _step, Saga.HELD)
    wf = build(b, clock, registry, store=MemRecordStore())  # type: ignore[arg-type]
    api = make_app([wf], tokens={READ: {"read"}}, metrics_registry=registry)
    outer = Starlette(routes=[Mount("/wf", api)])
    auth = {"Authorization": f"Bearer {READ}"}

    async def check() -> None:
        transport = httpx.ASGITransport(app=outer)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            page = await c.get("/wf/ui/")
            assert page.status_code == 200 and 'src="app.js"' in page.text
            assert (await c.get("/wf/ui/app.js")).status_code == 200
            r = await c.get("/wf/")
            assert r.status_code == 307 and r.headers["location"] == "ui/"
            info = (await c.get("/wf/api/workflows/one", headers=auth)).json()
            assert [n["name"] for n in info["nodes"]] == ["ASKED", "HELD"]
            assert info["edges"] == [{"source": 1, "target": 2, "label": ""}]

    in_thread(check)


# -- in the browser ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if sync_playwright is None:
        need_service("", "the browser tests need playwright (pip install -e '.[dev]')")
    need_service(
        CHROMIUM if os.access(CHROMIUM, os.X_OK) else "",
        f"the browser tests need Debian's chromium at {CHROMIUM} "
        "(apt-get install chromium; .ci/run installs it)",
    )
    expect.set_options(timeout=WAIT_MS)
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


class Shots:
    def __init__(self, page: Page, folder: Path) -> None:
        self.page = page
        self.folder = folder
        self.n = 0

    def __call__(self, name: str) -> Path:
        self.n += 1
        path = self.folder / f"{self.n:02d}-{name}.png"
        self.page.screenshot(path=path, full_page=True)
        assert path.stat().st_size > 1000
        return path


@dataclass
class Ui:
    page: Page
    srv: UiServer
    shot: Shots

    def open(self, token: str, hash_: str = "") -> None:
        """Open the UI and sign in."""
        self.page.goto(f"{self.srv.url}/ui/{hash_}")
        self.page.fill("#token", token)
        self.page.click("#login button[type=submit]")
        expect(self.page.locator("#nav")).to_be_visible()
        self.settled()

    def settled(self) -> None:
        """Wait until the page shows its current address: a click that navigates (Apply,
        Next, ...) changes the hash, and the view is drawn once the API answered."""
        self.page.wait_for_function(
            "() => { const m = document.querySelector('#main');"
            " return !m.hasAttribute('aria-busy') && m.dataset.hash === location.hash }"
        )

    def click(self, selector: str) -> None:
        """Click something that draws the view again, and wait for it."""
        self.page.click(selector)
        self.settled()

    def go(self, hash_: str) -> None:
        self.page.evaluate("h => { location.hash = h }", hash_)
        self.settled()

    def flash(self) -> Any:
        return expect(self.page.locator("#flash"))

    def confirm(self, reason: str | None = None) -> None:
        dialog = self.page.locator("#confirm")
        expect(dialog).to_be_visible()
        if reason is not None:
            self.page.fill("#confirm-reason", reason)
        self.page.click("#confirm-ok")
        expect(dialog).to_be_hidden()

    def rows(self, table: str = "#runs") -> list[str]:
        ids: list[str] = self.page.locator(f"{table} tbody tr").evaluate_all(
            "rows => rows.map(r => r.dataset.runId)"
        )
        return ids


@pytest.fixture
def ui(
    browser: Browser, server: UiServer, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Ui]:
    """A fresh browser context (its own sessionStorage) on the server. At the end: a
    screenshot, and checks that the page made no request elsewhere, raised nothing, and broke
    no Content-Security-Policy rule."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    requests: list[str] = []
    problems: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))

    def console(m: ConsoleMessage) -> None:
        if "Content Security Policy" in m.text or m.type == "warning":
            problems.append(f"console {m.type}: {m.text}")

    page.on("console", console)
    shots = Shots(page, tmp_path)
    try:
        yield Ui(page, server, shots)
        shots("end")
    except BaseException:
        with contextlib.suppress(Exception):
            shots("failed")
        raise
    finally:
        context.close()
    assert list(tmp_path.glob("*.png"))
    assert [u for u in requests if not u.startswith(f"{server.url}/")] == []
    assert problems == []


def test_sign_in_with_a_token_and_a_bad_token_is_refused(ui: Ui) -> None:
    page = ui.page
    page.goto(f"{ui.srv.url}/ui/")
    expect(page.locator("#login h1")).to_have_text("Sign in")
    expect(page.locator("#nav")).to_be_hidden()
    ui.shot("sign-in")
    page.fill("#token", secrets.token_urlsafe(32))
    page.click("#login button[type=submit]")
    expect(page.locator("#login-error")).to_contain_text("not valid (401)")
    ui.shot("bad-token")
    page.fill("#token", DISPATCH)  # a producer's token reads nothing
    page.click("#login button[type=submit]")
    expect(page.locator("#login-error")).to_contain_text("cannot read runs (403)")
    assert page.evaluate("sessionStorage.length") == 0
    page.fill("#token", READ)
    page.click("#login button[type=submit]")
    expect(page.locator("#runs-view h1")).to_have_text("Runs")
    expect(page.locator("#nav")).to_be_visible()
    assert page.evaluate("Object.values(sessionStorage)") == [READ]
    assert page.context.cookies() == []  # the token is never a cookie
    page.reload()  # the tab keeps it
    expect(page.locator("#runs-view")).to_be_visible()
    other = page.context.browser.new_context()  # type: ignore[union-attr]
    try:
        tab = other.new_page()  # another browser session: signed out
        tab.goto(f"{ui.srv.url}/ui/")
        expect(tab.locator("#login")).to_be_visible()
    finally:
        other.close()
    page.click("#signout")
    expect(page.locator("#login-error")).to_have_text("Signed out.")
    assert page.evaluate("sessionStorage.length") == 0


def test_filter_the_run_list_and_page_through_it(ui: Ui) -> None:
    srv, page = ui.srv, ui.page
    tier = uid("tier")
    done = orders(srv, *({"item": "cup", "customer": {"tier": tier}} for _ in range(12)))
    for rid, _ in done:
        completed(srv, rid)
    ((dead, _),) = dead_letters(srv, 1)
    pay_fid = uid("pay")
    pay = dispatch(srv.server, {"name": "payment.started", "foreign_id": pay_fid})[0]["run_id"]
    ui.open(READ)

    # by an object field, 10 a page: two pages
    page.fill("#f-field", "customer.tier")
    page.fill("#f-value", tier)
    page.select_option("#f-limit", "10")
    ui.click("#apply")
    expect(page.locator("#runs tbody tr")).to_have_count(10)
    expect(page.locator("#page-info")).to_have_text(f"Runs 1{DASH}10")
    assert f"value={tier}" in page.evaluate("location.hash")  # a link to the same view
    ids = [rid for rid, _ in done][::-1]  # newest first
    assert ui.rows() == ids[:10]
    ui.shot("page-1")
    expect(page.locator("#prev")).to_be_disabled()
    ui.click("#next")
    expect(page.locator("#page-info")).to_have_text(f"Runs 11{DASH}12")
    assert ui.rows() == ids[10:]
    expect(page.locator("#next")).to_be_disabled()
    ui.shot("page-2")
    ui.click("#prev")
    expect(page.locator("#page-info")).to_have_text(f"Runs 1{DASH}10")

    # by workflow and status (the workflow's statuses are offered once it is chosen)
    expect(page.locator("#f-status")).to_be_disabled()
    page.select_option("#f-workflow", "orders")
    page.select_option("#f-status", "DELIVERED")
    page.select_option("#f-limit", "25")
    ui.click("#apply")
    expect(page.locator("#page-info")).to_have_text(f"Runs 1{DASH}12")
    assert set(ui.rows()) == set(ids)
    page.select_option("#f-workflow", "payments")
    ui.click("#apply")
    expect(page.locator("#runs-empty")).to_have_text("No runs match these filters.")

    # by run state, over every run
    ui.click("#clear")
    expect(page.locator("#f-field")).to_have_value("")
    page.select_option("#f-state", "paused")
    ui.click("#apply")
    expect(page.locator(f'#runs tr[data-run-id="{dead}"]')).to_be_visible()
    states = page.locator("#runs tbody td .badge").all_inner_texts()
    assert states and all(s.startswith("Paused") for s in states)
    assert not set(ui.rows()) & set(ids)
    ui.shot("paused")

    # by foreign id
    ui.click("#clear")
    expect(page.locator("#f-state")).to_have_value("")
    page.fill("#f-foreign", pay_fid)
    ui.click("#apply")
    expect(page.locator("#runs tbody tr")).to_have_count(1)
    assert ui.rows() == [pay]
    expect(page.locator("#runs tbody tr td").nth(1)).to_have_text("payments")
    ui.shot("by-foreign-id")


def test_open_a_dead_letter_and_resume_it(ui: Ui) -> None:
    srv, page = ui.srv, ui.page
    ((rid, fid),) = dead_letters(srv, 1, item="lamp")
    before = stored(srv, rid)
    assert before.record.meta.paused_by == "retries exhausted" and before.record.meta.version == 2
    ui.open(ADMIN, f"#/runs?foreign_id={fid}")
    expect(page.locator("#runs tbody tr")).to_have_count(1)
    ui.click(f'#runs tr[data-run-id="{rid}"] a')

    # the run: summary, object, the pause reason, the history with per-version changes
    expect(page.locator("#run-id")).to_have_text(rid)
    expect(page.locator("#foreign-id")).to_have_text(fid)
    expect(page.locator("#status")).to_have_text("PLACED (1)")
    expect(page.locator("#paused-by")).to_have_text("retries exhausted")
    expect(page.locator("#pause-reason")).to_contain_text("the warehouse is down")
    assert json.loads(page.locator("#object").inner_text())["item"] == "lamp"
    expect(page.locator("#history > li")).to_have_count(2)
    v1 = page.locator('#history li[data-version="1"]')
    expect(v1.locator('tr[data-path="item"] td.after')).to_have_text('"lamp"')
    expect(v1.locator('tr[data-path="item"] td.before')).to_have_text("—")
    v2 = page.locator('#history li[data-version="2"]')
    expect(v2.locator(".badge")).to_have_text("Paused")
    expect(v2.locator(".reason")).to_contain_text("the warehouse is down")
    expect(v2).to_contain_text("No change to the object.")
    expect(page.locator('#actions [data-action="pause"]')).to_be_disabled()
    expect(page.locator('#actions [data-action="delete-data"]')).to_be_disabled()
    expect(page.locator('svg.graph g.node.current[data-name="PLACED"]')).to_have_count(1)
    ui.shot("dead-letter")

    # the confirmation: cancelled, nothing happens
    page.click('#actions [data-action="resume"]')
    expect(page.locator("#confirm-title")).to_have_text("Resume this run?")
    expect(page.locator("#confirm-reason")).to_be_hidden()
    ui.shot("confirm-resume")
    page.click("#confirm-cancel")
    expect(page.locator("#confirm")).to_be_hidden()
    time.sleep(0.3)
    assert stored(srv, rid).record.meta.version == 2

    # the warehouse is back: resume, confirmed
    heal(srv, fid)
    page.click('#actions [data-action="resume"]')
    ui.confirm()
    ui.flash().to_contain_text("Resumed: the run is Running")
    after = wait_stored(srv, rid, lambda d: d.record.run_state.name == "COMPLETED")
    states = [v.record.run_state.name for v in after.history]
    assert states[:3] == ["INITIATED", "PAUSED", "RUNNING"] and states[-1] == "COMPLETED"
    assert after.record.meta.paused_by == "" and json.loads(after.record.object)["note"] == (
        "delivered"
    )
    ui.click("#refresh")
    expect(page.locator("#status")).to_have_text("DELIVERED (4)")
    expect(page.locator("#pause-banner")).to_have_count(0)
    expect(page.locator("#history > li")).to_have_count(len(after.history))
    shipped = next(v.record.meta.version for v in after.history if v.record.status == 3)
    row = page.locator(f'#history li[data-version="{shipped}"] tr[data-path="tracking"]')
    expect(row.locator("td.after")).to_have_text('"TRK-LAMP"')
    expect(page.locator('svg.graph g.node.current[data-name="DELIVERED"]')).to_have_count(1)
    ui.shot("resumed")


def test_pause_cancel_and_delete_data_with_reasons(ui: Ui) -> None:
    srv, page = ui.srv, ui.page
    (res,) = dispatch(srv.server, {"name": "payment.started", "foreign_id": uid("ctl")})
    rid = res["run_id"]
    ui.open(ADMIN, f"#/run/{rid}")
    expect(page.locator("#status")).to_have_text("AWAITING (1)")
    expect(page.locator('#actions [data-action="resume"]')).to_be_disabled()

    page.click('#actions [data-action="pause"]')
    expect(page.locator("#confirm-reason")).to_be_visible()
    ui.confirm("looking into it")
    ui.flash().to_contain_text("Paused: the run is Paused")
    expect(page.locator("#paused-by")).to_have_text("operator")
    expect(page.locator("#pause-reason")).to_have_text("looking into it")
    rec = stored(srv, rid).record
    assert rec.run_state.name == "PAUSED" and rec.meta.run_state_reason == "looking into it"
    assert rec.meta.paused_by == "operator"
    ui.shot("paused")

    page.click('#actions [data-action="cancel"]')
    expect(page.locator("#confirm-ok")).to_have_class("danger")
    ui.confirm("customer left")
    ui.flash().to_contain_text("Cancelled: the run is Cancelled")
    assert stored(srv, rid).record.run_state.name == "CANCELLED"
    expect(page.locator('#actions [data-action="cancel"]')).to_be_disabled()

    page.click('#actions [data-action="delete-data"]')
    expect(page.locator("#confirm-title")).to_have_text("Delete this run's data?")
    ui.confirm("GDPR request")
    ui.flash().to_contain_text("Data deletion requested")
    detail = wait_stored(srv, rid, lambda d: d.record.run_state.name == "DATA_DELETED")
    reasons = [v.record.meta.run_state_reason for v in detail.history]
    assert {"looking into it", "customer left", "GDPR request"} <= set(reasons)
    ui.click("#refresh")
    history = page.locator("#history .reason").all_inner_texts()
    assert {"looking into it", "customer left", "GDPR request"} <= set(history)
    ui.shot("deleted")


def test_bulk_resume_from_the_dead_letter_view(ui: Ui) -> None:
    srv, page = ui.srv, ui.page
    (a, fa), (b, fb), (c, fc) = dead_letters(srv, 3)
    heal(srv, fa)
    heal(srv, fb)  # c's warehouse is still down
    ui.open(ADMIN, "#/dead?workflow=orders")
    for rid in (a, b, c):
        expect(page.locator(f'#dead tr[data-run-id="{rid}"]')).to_be_visible()
    expect(page.locator(f'#dead tr[data-run-id="{a}"] td.reason')).to_contain_text(
        "the warehouse is down"
    )
    expect(page.locator("#resume-selected")).to_be_disabled()
    page.check(f'#dead tr[data-run-id="{a}"] input.pick')
    page.check(f'#dead tr[data-run-id="{b}"] input.pick')
    expect(page.locator("#resume-selected")).to_have_text("Resume selected (2)")
    ui.shot("selected")
    page.click("#resume-selected")
    expect(page.locator("#confirm-title")).to_have_text("Resume 2 runs?")
    ui.confirm()
    ui.flash().to_have_text(re.compile(r"Resumed 2 of 2 runs\."))
    completed(srv, a)
    completed(srv, b)
    assert stored(srv, c).record.meta.version == 2  # not selected: untouched
    ui.click("#dead-view .heading button")  # refresh
    expect(page.locator(f'#dead tr[data-run-id="{a}"]')).to_have_count(0)
    expect(page.locator(f'#dead tr[data-run-id="{c}"]')).to_be_visible()

    # every dead letter of the workflow at once (the bulk endpoint)
    heal(srv, fc)
    page.fill("#resume-limit", "500")
    page.click("#resume-all")
    expect(page.locator("#confirm-text")).to_contain_text(
        "up to 500 paused runs of workflow orders"
    )
    expect(page.locator("#confirm-text")).to_contain_text("retries exhausted")
    ui.confirm()
    ui.flash().to_have_text(re.compile(r"Resumed \d+ runs?\."))
    done = completed(srv, c)
    assert [h["run_state_name"] for h in done["history"]][1:3] == ["Paused", "Running"]
    ui.shot("bulk-resumed")


def test_a_read_only_token_sees_actions_refused(ui: Ui) -> None:
    srv, page = ui.srv, ui.page
    ((rid, fid),) = dead_letters(srv, 1)
    heal(srv, fid)  # it would complete, if resumed
    ui.open(READ, f"#/run/{rid}")
    expect(page.locator("#paused-by")).to_have_text("retries exhausted")
    page.click('#actions [data-action="resume"]')
    ui.confirm()
    ui.flash().to_contain_text("Refused (403)")
    ui.flash().to_contain_text("admin scope")
    expect(page.locator("#flash")).to_have_class("error")
    ui.shot("refused")

    ui.go("#/dead?workflow=orders")
    page.check(f'#dead tr[data-run-id="{rid}"] input.pick')
    page.click("#resume-selected")
    ui.confirm()
    ui.flash().to_contain_text("Resumed 0 of 1 run.")
    ui.flash().to_contain_text("Refused (403)")
    page.click("#resume-all")
    ui.confirm()
    ui.flash().to_contain_text("Refused (403)")
    time.sleep(0.5)
    rec = stored(srv, rid).record
    assert rec.run_state.name == "PAUSED" and rec.meta.version == 2


def test_each_workflow_graph_has_one_node_per_status(ui: Ui) -> None:
    page = ui.page
    with httpx.Client(base_url=ui.srv.url, headers={"Authorization": f"Bearer {READ}"}) as c:
        infos = c.get("/api/workflows").json()["workflows"]
    ui.open(READ, "#/workflows")
    expect(page.locator("svg.graph")).to_have_count(len(infos))
    for info in infos:
        graph = page.locator(f'svg.graph[data-workflow="{info["name"]}"]')
        in_graph = {n["name"] for n in info["nodes"]}
        assert in_graph == {s["name"] for s in info["statuses"]} - {"UNKNOWN"}
        expect(graph.locator("g.node")).to_have_count(len(info["nodes"]))
        names = graph.locator("g.node").evaluate_all("gs => gs.map(g => g.dataset.name)")
        assert sorted(names) == sorted(in_graph)
        assert graph.locator("g.node text").all_text_contents() == names
        expect(graph.locator("path.edge[data-source]")).to_have_count(len(info["edges"]))
        start = graph.locator("g.node.start").evaluate_all("gs => gs.map(g => g.dataset.name)")
        assert start == [n["name"] for n in info["nodes"] if n["start"]]
        terminal = graph.locator("g.node.terminal").evaluate_all(
            "gs => gs.map(g => g.dataset.name)"
        )
        assert sorted(terminal) == sorted(n["name"] for n in info["nodes"] if n["terminal"])
        # no two statuses drawn on top of each other
        boxes = graph.locator("g.node > rect:not(.outer)").evaluate_all(
            "rs => rs.map(r => { const b = r.getBBox(); return [b.x, b.y, b.width, b.height] })"
        )
        for i, (x1, y1, w1, h1) in enumerate(boxes):
            for x2, y2, w2, h2 in boxes[i + 1 :]:
                assert x1 + w1 <= x2 or x2 + w2 <= x1 or y1 + h1 <= y2 or y2 + h2 <= y1
    orders_graph = page.locator('svg.graph[data-workflow="orders"]')
    assert sorted(
        orders_graph.locator("g.node.terminal").evaluate_all("gs => gs.map(g => g.dataset.name)")
    ) == ["DELIVERED", "REJECTED"]
    saga = page.locator('svg.graph[data-workflow="bookings"] .edge-label text').all_text_contents()
    assert sorted(saga) == ["compensate (refund)", "compensate (release)", "retries exhausted"]
    ui.shot("graphs")


def test_values_are_shown_as_text_never_as_markup(ui: Ui) -> None:
    """Whatever a run holds (a foreign id, an object's keys and values) is shown as text:
    nothing in it becomes an element or runs."""
    srv, page = ui.srv, ui.page
    fid = f'<img src=x onerror="window.__xss=1">{uid("x")}'
    item = "<script>window.__xss=2</script>"
    (res,) = dispatch(
        srv.server,
        {"name": "order.placed", "foreign_id": fid,
         "payload": {"item": item, "customer": {"<b>k</b>": "<img src=y onerror=window.__xss=3>"}}},
    )  # fmt: skip
    rid = res["run_id"]
    completed(srv, rid)
    ui.open(READ, "#/runs")
    page.fill("#f-foreign", fid)
    ui.click("#apply")
    expect(page.locator("#runs td.foreign")).to_have_text(fid)
    ui.click(f'#runs tr[data-run-id="{rid}"] a')
    expect(page.locator("#foreign-id")).to_have_text(fid)
    assert json.loads(page.locator("#object").inner_text())["item"] == item
    change = page.locator('#history li[data-version="1"] tr[data-path="customer.<b>k</b>"]')
    expect(change.locator("td.after")).to_have_text('"<img src=y onerror=window.__xss=3>"')
    assert page.evaluate("window.__xss") is None
    assert page.locator("#main img, #main script, #main b").count() == 0
    ui.shot("as-text")
