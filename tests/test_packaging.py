"""The built wheel, installed into a fresh virtualenv, as a stranger would: one import
namespace (``workflow``, ``workflow.adapters.*``, no top-level ``adapters``), a missing extra
named in its ImportError, shipped migrations that run, then a workflow on them, and the web
UI's static files in it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import uuid
import zipfile
from pathlib import Path

import pytest

from .conftest import PG_URL

REPO = Path(__file__).resolve().parent.parent

SCRIPT = textwrap.dedent(
    """
    import asyncio, enum, importlib.util, subprocess, sys

    assert importlib.util.find_spec("adapters") is None, "a top-level adapters was installed"
    import workflow, workflow.adapters
    assert "site-packages" in workflow.__file__, workflow.__file__

    try:
        import workflow.adapters.kafka
    except ImportError as err:
        assert 'aioworkflow[kafka]' in str(err), err
    else:
        raise AssertionError("workflow.adapters.kafka imported without the kafka extra")

    from pydantic import BaseModel
    from workflow import Builder, Run
    from workflow.adapters.sql import (
        SQLRecordStore, SQLRoleScheduler, SQLStreamer, SQLTimeoutStore, create_schema,
        make_engine,
    )

    class S(enum.IntEnum):
        UNKNOWN = 0
        START = 1
        DONE = 2

    class O(BaseModel):
        n: int = 0

    async def step(run: Run[O, S]) -> S:
        run.object.n += 1
        return S.DONE

    async def main(url: str, schema: str | None) -> None:
        kw = {}
        if schema:
            kw["connect_args"] = {"server_settings": {"search_path": schema}}
        engine = make_engine(url, **kw)
        b = Builder[O, S]("packaged")
        b.add_step(S.START, step, S.DONE)
        streamer = SQLStreamer(engine)
        wf = b.build(
            streamer,
            SQLRecordStore(engine, streamer=streamer),
            SQLRoleScheduler(engine),
            timeout_store=SQLTimeoutStore(engine),
        )
        async with wf:
            rid = await wf.trigger("p")
            run = await wf.await_("p", rid, S.DONE, timeout=30)
        assert run.object.n == 1
        await streamer.close()
        await engine.dispose()

    for arg in sys.argv[1:]:
        url, _, schema = arg.partition("|")
        cmd = [sys.executable, "-m", "workflow.adapters.migrate", "upgrade", "--url", url]
        if schema:
            cmd += ["--schema", schema]
        out = subprocess.run(cmd, capture_output=True, text=True, cwd="/")
        assert out.returncode == 0 and "upgraded to 0004" in out.stdout, out.stderr
        asyncio.run(main(url, schema or None))
    print("ok")
    """
)


@pytest.mark.timeout(600)
def test_the_wheel_installs_one_namespace_and_working_migrations(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(REPO)],
        check=True,
        capture_output=True,
    )
    (wheel,) = wheels.glob("aioworkflow-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    ui = {f"workflow/http/ui/{p.name}" for p in (REPO / "workflow" / "http" / "ui").iterdir()}
    assert ui and ui <= names, f"the web UI's files missing from the wheel: {sorted(ui - names)}"
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    done = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", f"{wheel}[sql]"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    targets = [f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"]
    schema = None
    if PG_URL:
        schema = f"pkg_{uuid.uuid4().hex[:12]}"
        subprocess.run(
            [str(python), "-c", _CREATE_SCHEMA, PG_URL, schema], check=True, cwd=tmp_path
        )
        targets.append(f"{PG_URL}|{schema}")
    elif os.environ.get("CI"):
        pytest.fail("the packaging test needs WORKFLOW_TEST_POSTGRES_URL in CI")
    try:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        out = subprocess.run(
            [str(python), "-c", SCRIPT, *targets],
            capture_output=True,
            text=True,
            cwd=tmp_path,  # not the repository: nothing importable from the source tree
            env=env,
            timeout=300,
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "ok"
    finally:
        if schema is not None:
            subprocess.run(
                [str(python), "-c", _DROP_SCHEMA, PG_URL, schema], check=False, cwd=tmp_path
            )


_CREATE_SCHEMA = """
import asyncio, sys
from sqlalchemy.ext.asyncio import create_async_engine
async def main():
    engine = create_async_engine(sys.argv[1])
    async with engine.begin() as conn:
        await conn.exec_driver_sql(f"CREATE SCHEMA {sys.argv[2]}")
    await engine.dispose()
asyncio.run(main())
"""

_DROP_SCHEMA = _CREATE_SCHEMA.replace(
    "CREATE SCHEMA {sys.argv[2]}", "DROP SCHEMA {sys.argv[2]} CASCADE"
)


def test_nothing_imports_the_top_level_adapters_directory() -> None:
    """In a checkout, adapters/ is importable as ``adapters`` too; a module imported under
    both names would exist twice (two sets of module state). Only ``workflow.adapters``."""
    pattern = re.compile(r"^\s*(from\s+adapters[\s.]|import\s+adapters\b)", re.MULTILINE)
    offenders = [
        str(path.relative_to(REPO))
        for top in ("workflow", "tests", "examples", "bench", "migrations", "scripts")
        for path in (REPO / top).rglob("*.py")
        if "workflow/adapters" not in str(path) and pattern.search(path.read_text())
    ]
    assert offenders == []


def test_adapters_import_no_private_engine_module() -> None:
    """Adapters are written against the public API (``workflow``, ``workflow.abc``), as an
    outside adapter author's would be."""
    private = re.compile(r"^\s*(from|import)\s+workflow\._", re.MULTILINE)
    offenders = [
        str(path.relative_to(REPO))
        for path in (REPO / "adapters").rglob("*.py")
        if private.search(path.read_text())
    ]
    assert offenders == []
