"""The ``aioworkflow`` command line: operate the runs stored in a SQL database.

    aioworkflow db upgrade --url sqlite+aiosqlite:///gettingstarted.db
    aioworkflow runs list --url ... [--workflow W] [--status N] [--run-state paused] [--json]
    aioworkflow runs show RUN_ID
    aioworkflow runs pause|resume|cancel|delete-data RUN_ID [--reason TEXT]
    aioworkflow runs resume --paused-by retries --workflow W      # replay a dead letter
    aioworkflow runs purge --finished-before 2026-01-01           # retention
    aioworkflow graph examples.gettingstarted:build               # Mermaid
    aioworkflow serve --app myapp.api:app                         # the HTTP API

Needs the ``cli`` extra (``pip install "aioworkflow[cli]"``: click), and the ``sql`` extra
for the database; ``serve`` needs the ``http`` extra. ``python -m workflow.cli`` is the same
program. The commands live in :mod:`workflow.cli.commands` (a ``click`` group, ``cli``);
docs/operations.md describes them.
"""

from __future__ import annotations

import importlib
import sys
from importlib.util import find_spec

__all__ = ["NEEDS", "main"]

NEEDS = ("click", "sqlalchemy", "aiosqlite", "asyncpg", "alembic")
"""What the ``cli`` extra installs (click, and the ``sql`` extra)."""


def main(argv: list[str] | None = None) -> int:
    """Run the command line on ``argv`` (default: ``sys.argv[1:]``); returns the exit code
    (0 done, 1 an operation failed, 2 a usage error)."""
    missing = [m for m in NEEDS if find_spec(m) is None]
    if missing:
        print(
            f"Error: the aioworkflow command line needs {', '.join(missing)}: "
            'pip install "aioworkflow[cli]"',
            file=sys.stderr,
        )
        return 1
    commands = importlib.import_module("workflow.cli.commands")
    code: int = commands.run(argv)
    return code
