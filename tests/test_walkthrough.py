"""The README's walkthrough ("Operate it") run as it is written: every ``$`` command of its
``console`` blocks goes, in order, to one bash process (as if pasted into a terminal) in an
empty directory, and what each prints must contain the lines the README shows (run ids, trace
ids and times aside). The walkthrough starts the main example on a SQLite file, lists its run
with ``aioworkflow runs list``, serves examples/serve.py with ``aioworkflow serve`` (tokens
from the environment, spans printed to its log), dispatches a batch with curl, answers a
callback, greps the trace of a run and stops the server.

What the README asks the reader to do by hand happens where the README says it: after the
batch is dispatched, the test pauses and resumes bob's run in the web UI (Debian's chromium
driven by Playwright, as in tests/test_ui.py; without a browser, outside CI, through the same
HTTP endpoints the UI calls). It waits, on the real server, until the dispatched run has
finished before the next command, as a reader would.

On the shell's ``PATH``: ``python`` (this interpreter), ``aioworkflow`` (the command line
of this checkout, killed when its shell is gone) and ``curl`` (a small stand-in for the
options the README uses, on urllib, so that the test needs no curl)."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from .test_http import free_port
from .test_ui import CHROMIUM, CHROMIUM_ARGS, WAIT_MS

try:
    from playwright.sync_api import expect, sync_playwright

    HAVE_PLAYWRIGHT = True
except ImportError:  # the UI step goes through the API (fails in CI)
    HAVE_PLAYWRIGHT = False

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
README_PORT = "8000"
REASON = "checking bob's address"

CURL = '''#!{python} -IS
"""curl -s [-H HEADER]... [-d DATA] [--retry N --retry-connrefused] URL: the options the
README's commands use (stdlib only, so that it starts fast)."""
import sys
import time
import urllib.error
import urllib.request

args, headers, data, url, retries = sys.argv[1:], {{}}, None, "", 0
while args:
    arg = args.pop(0)
    if arg == "-H":
        name, _, value = args.pop(0).partition(":")
        headers[name.strip().title()] = value.strip()
    elif arg == "-d":
        data = args.pop(0).encode()
    elif arg == "--retry":
        retries = int(args.pop(0))
    elif arg.startswith("http"):
        url = arg
    elif arg not in ("-s", "--retry-connrefused"):
        sys.exit(f"curl (the test's stand-in): {{arg}} is not supported")
if data is not None:
    headers.setdefault("Content-Type", "application/x-www-form-urlencoded")  # as curl -d does
request = urllib.request.Request(url, data=data, headers=headers)
for attempt in range(retries + 1):
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            body = response.read()
    except urllib.error.HTTPError as err:  # curl prints the body of any status
        body = err.read()
    except urllib.error.URLError:
        if attempt == retries:
            sys.exit(7)  # curl's "failed to connect"
        time.sleep(2**attempt)  # as curl: 1 s, 2 s, 4 s ...
        continue
    sys.stdout.write(body.decode())
    break
'''

# The console script, dying with its shell (tests/procs/lifetime.py): no server is left behind
# even when this test is killed.
AIOWORKFLOW = """import sys
from tests.procs.lifetime import die_with_parent
from workflow.cli import main
die_with_parent()
sys.argv[0] = "aioworkflow"
sys.exit(main(sys.argv[1:]))
"""

NORMAL = [
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"), "<run id>"),
    (re.compile(r"\b[0-9a-f]{32}\b"), "<trace id>"),
    (re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ"), "<time>"),
]
SPAN = re.compile(r'^span (\S+) trace=([0-9a-f]{32}) .*foreign_id="([^"]*)"', re.M)


# -- the README's commands -----------------------------------------------------------------


@dataclass
class Command:
    text: str  # as bash reads it, continuation lines included
    shown: list[str] = field(default_factory=list)  # the output the README shows ("...": more)


def walkthrough() -> list[list[Command]]:
    """The ``console`` blocks of the README's "Operate it" section, as commands."""
    section = README.read_text().split("\n## Operate it\n", 1)[1].split("\n## ", 1)[0]
    return [parse(block) for block in re.findall(r"```console\n(.*?)```", section, re.S)]


def parse(block: str) -> list[Command]:
    commands: list[Command] = []
    lines = block.splitlines()
    while lines:
        line = lines.pop(0)
        if not line.startswith("$ "):
            assert commands, f"output before the first command: {line!r}"
            commands[-1].shown.append(line)
            continue
        text = line[2:]
        while incomplete(text):
            text += "\n" + lines.pop(0)
        commands.append(Command(text))
    return commands


def incomplete(text: str) -> bool:
    """A command that goes on on the next line (a backslash, or a quote left open)."""
    if text.endswith("\\"):
        return True
    try:
        shlex.split(text)
    except ValueError:
        return True
    return False


def normal(line: str) -> str:
    for pattern, placeholder in NORMAL:
        line = pattern.sub(placeholder, line)
    return " ".join(line.split())


def check_shown(command: Command, out: list[str]) -> None:
    """Each line the README shows was printed; all of them, when it shows no "..."."""
    printed = {normal(line) for line in out}
    missing = [s for s in command.shown if s != "..." and normal(s) not in printed]
    assert not missing, f"$ {command.text}\nprinted:\n" + "\n".join(out)
    if command.shown and "..." not in command.shown:
        assert len(out) == len(command.shown), f"$ {command.text}\nprinted:\n" + "\n".join(out)


# -- a shell -------------------------------------------------------------------------------


class Shell:
    """One bash process reading commands from its stdin, like a terminal's."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            ["bash", "--norc", "--noprofile"],
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.mark = f"--done-{uuid.uuid4().hex}--"
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def run(self, command: str, timeout: float = 60) -> tuple[int, list[str]]:
        """Run ``command``: its exit code and what it printed."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{command}\nprintf '\\n{self.mark} %s\\n' \"$?\"\n")
        self.proc.stdin.flush()
        out: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"$ {command}\ndid not finish: {out}") from None
            assert line is not None, f"bash exited: {out}"
            if line.startswith(self.mark):
                if out and out[-1] == "":
                    out.pop()  # the newline printed before the mark
                return int(line.split()[-1]), out
            out.append(line)

    def value(self, name: str) -> str:
        code, out = self.run(f'printf "%s\\n" "${name}"')
        assert code == 0 and len(out) == 1 and out[0], f"${name} is not set"
        return out[0]

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.reader.join(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def shell_env(bin_dir: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AIOWORKFLOW_", "WORKFLOW_DATABASE_", "OTEL_"))
    }
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(ROOT)
    return env


def make_bin(bin_dir: Path) -> None:
    bin_dir.mkdir()
    scripts = {
        "python": f'#!/bin/sh\nexec "{sys.executable}" "$@"\n',
        "aioworkflow": f'#!/bin/sh\nexec "{sys.executable}" -c {shlex.quote(AIOWORKFLOW)} "$@"\n',
        "curl": CURL.format(python=sys.executable),
    }
    for name, text in scripts.items():
        path = bin_dir / name
        path.write_text(text)
        path.chmod(0o755)


def running(pid: int) -> bool:
    """The process exists and has not exited (a zombie has)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_until(what: str, ok: Any, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = ok()
        if found:
            return found
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.05)


# -- what the reader does in the web UI ----------------------------------------------------


def browser_missing() -> str:
    if not HAVE_PLAYWRIGHT:
        return "playwright is not installed"
    if not os.access(CHROMIUM, os.X_OK):
        return f"no chromium at {CHROMIUM}"
    return ""


def pause_and_resume_in_the_ui(url: str, token: str, run_id: str, shots: Path) -> None:
    """Sign in with ``token``, open the run from the run list, pause it with a reason and
    resume it, each confirmed: what the README asks the reader to do."""
    missing = browser_missing()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"the walkthrough's UI step needs a browser: {missing}")
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as c:
            for action, body in (("pause", {"reason": REASON}), ("resume", {})):
                r = c.post(f"/api/runs/{run_id}/{action}", json=body)
                assert r.status_code == 200, r.text
        return
    expect.set_options(timeout=WAIT_MS)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(WAIT_MS)
            page.goto(f"{url}/ui/")
            page.fill("#token", token)
            page.click("#login button[type=submit]")
            expect(page.locator("#runs tbody tr")).to_have_count(3)  # andrew, ann, bob
            page.screenshot(path=shots / "1-runs.png", full_page=True)
            page.click(f'#runs tr[data-run-id="{run_id}"] a')
            expect(page.locator("#run-id")).to_have_text(run_id)
            expect(page.locator("#foreign-id")).to_have_text("bob")
            page.click('#actions [data-action="pause"]')
            page.fill("#confirm-reason", REASON)
            page.click("#confirm-ok")
            expect(page.locator("#flash")).to_contain_text("Paused: the run is Paused")
            expect(page.locator("#pause-reason")).to_have_text(REASON)
            page.screenshot(path=shots / "2-paused.png", full_page=True)
            page.click('#actions [data-action="resume"]')
            page.click("#confirm-ok")
            expect(page.locator("#flash")).to_contain_text("Resumed: the run is Running")
            page.screenshot(path=shots / "3-resumed.png", full_page=True)
        finally:
            browser.close()


# -- the test ------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_the_readme_walkthrough_runs_as_written(tmp_path: Path) -> None:
    blocks = walkthrough()
    commands = [c for block in blocks for c in block]
    assert len(blocks) >= 2 and len(commands) >= 8, "the README's walkthrough is missing"
    assert any(f"--port {README_PORT}" in c.text for c in commands), "serve's port changed"
    port = str(free_port())
    url = f"http://127.0.0.1:{port}"
    bin_dir, walk = tmp_path / "bin", tmp_path / "walk"
    make_bin(bin_dir)
    walk.mkdir()
    shell = Shell(walk, shell_env(bin_dir))
    server: int | None = None
    batch: list[dict[str, Any]] = []
    ui_done = False
    try:
        for block in blocks:
            if batch and not ui_done:  # the README's UI step comes after the batch's block
                admin = shell.value("ADMIN_TOKEN")
                pause_and_resume_in_the_ui(url, admin, batch[1]["run_id"], tmp_path)
                ui_done = True
                bob = httpx.get(
                    f"{url}/api/runs/{batch[1]['run_id']}",
                    headers={"Authorization": f"Bearer {admin}"},
                ).json()
                states = [v["run_state_name"] for v in bob["history"]]
                assert states == ["Initiated", "Paused", "Running"], bob
                assert bob["history"][1]["reason"] == REASON
            for command in block:
                text = command.text.replace(f"127.0.0.1:{README_PORT}", f"127.0.0.1:{port}")
                text = text.replace(f"--port {README_PORT}", f"--port {port}")
                code, out = shell.run(text)
                if code != 0:
                    printed = "\n".join(out)
                    made = walk / "serve.log"
                    server_log = made.read_text() if made.exists() else "(none)"
                    pytest.fail(f"$ {text}\nexit code {code}:\n{printed}\nserve.log:\n{server_log}")
                if text.rstrip().endswith("&") and " serve " in text:
                    server = int(shell.run("echo $!")[1][0])
                results = dispatch_results(out)
                if results is not None and not batch:
                    batch = results
                    finished(walk, url, shell.value("ADMIN_TOKEN"), batch[0]["run_id"])
                check_shown(command, out)
        assert ui_done and server is not None, "the walkthrough has no batch or no server"
        code, out = shell.run("wait", timeout=30)  # for the server the README stopped
        assert not running(server), "the README's last command did not stop the server"
    finally:
        if server is not None:
            stop(server)
        shell.close()
    log = (walk / "serve.log").read_text()
    assert "Application shutdown complete" in log and "Traceback" not in log, log

    # the batch: one result per event, the unknown name on its own
    assert [r["status"] for r in batch] == ["accepted", "accepted", "unknown_name"], batch
    # the spans: one trace per run, every span of it
    spans: dict[str, list[tuple[str, str]]] = {}
    for name, trace, foreign_id in SPAN.findall(log):
        spans.setdefault(foreign_id, []).append((name, trace))
    ann, bob = spans["ann"], spans["bob"]
    assert sorted(n for n, _ in ann) == sorted(
        ["workflow.trigger", *["workflow.step"] * 4, "workflow.hook"]
    ), ann
    assert sorted(n for n, _ in bob) == ["workflow.callback", "workflow.trigger"], bob
    assert len({t for _, t in ann}) == 1 and len({t for _, t in bob}) == 1
    assert ann[0][1] != bob[0][1]
    assert "andrew" not in spans  # the example ran before, without tracing


def stop(pid: int) -> None:
    """The server, if the walkthrough did not stop it: SIGTERM, then SIGKILL."""
    with contextlib.suppress(OSError):
        if b"examples.serve:app" not in Path(f"/proc/{pid}/cmdline").read_bytes():
            return  # not the server (it exited, and its id was given to another)
    if running(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while running(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if running(pid):
            os.kill(pid, signal.SIGKILL)


def dispatch_results(out: list[str]) -> list[dict[str, Any]] | None:
    if len(out) != 1 or not out[0].startswith('{"results"'):
        return None
    results: list[dict[str, Any]] = json.loads(out[0])["results"]
    return results


def finished(walk: Path, url: str, token: str, run_id: str) -> None:
    """Wait, on the server, for the run to complete and its completion hook's span to be
    printed: what the reader sees by the time they look."""

    def done() -> bool:
        r = httpx.get(f"{url}/api/runs/{run_id}", headers={"Authorization": f"Bearer {token}"})
        return bool(r.json()["run_state_name"] == "Completed")

    def hook_span() -> bool:
        spans = SPAN.findall((walk / "serve.log").read_text())
        return any(name == "workflow.hook" for name, _, _ in spans)

    wait_until(f"run {run_id} completes", done)
    wait_until("the completion hook's span", hook_span)
