"""The ``aioworkflow`` console script as a stranger gets it: the built wheel in a fresh
virtualenv, first without the ``cli`` extra (the script says what to install), then with it,
on the oldest click the extra allows (8.1)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(600)
def test_the_console_script_from_the_wheel(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(REPO)],
        check=True,
        capture_output=True,
    )
    (wheel,) = wheels.glob("aioworkflow-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    script = str(venv / "bin" / "aioworkflow")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "AIOWORKFLOW"))}
    env.pop("WORKFLOW_DATABASE_URL", None)

    def aioworkflow(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [script, *args], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120
        )

    done = subprocess.run([*pip, str(wheel)], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    bare = aioworkflow("--help")
    assert bare.returncode == 1
    assert bare.stderr.strip() == (
        "Error: the aioworkflow command line needs click, sqlalchemy, aiosqlite, asyncpg, "
        'alembic: pip install "aioworkflow[cli]"'
    )

    done = subprocess.run(
        [*pip, f"{wheel}[cli]", "click==8.1.8"], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    helped = aioworkflow("--help")
    assert helped.returncode == 0, helped.stderr
    assert helped.stdout.startswith("Usage: aioworkflow [OPTIONS] COMMAND [ARGS]...")
    url = f"sqlite+aiosqlite:///{tmp_path / 'app.db'}"
    up = aioworkflow("db", "upgrade", "--url", url)
    assert up.returncode == 0 and "from none to 0004" in up.stdout, up.stderr
    listed = aioworkflow("runs", "list", "--url", url)
    assert listed.returncode == 0 and listed.stderr.strip() == "no runs", listed.stderr
    bad = aioworkflow("runs", "list", "--url", url, "--updated-after", "yesterday")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    missing = aioworkflow("serve", "--app", "x:y")
    assert missing.returncode == 1
    assert missing.stderr.strip() == 'Error: serve needs uvicorn: pip install "aioworkflow[http]"'
