"""Timer ids are never reused: ``workflow_timeouts.id`` is ``AUTOINCREMENT`` on SQLite.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05

A plain SQLite ``INTEGER PRIMARY KEY`` gives a new row the largest id + 1, so the id of the
newest timer comes back once its row is deleted. The timeout process completes (or cancels) the
timer it fired by id after the run's own move has removed the run's timers at the status
(``cancel_run``); when another run armed a timer in between, that timer got the removed id and
was marked completed or deleted instead: it never fired. With ``AUTOINCREMENT`` SQLite never
hands out an id again (``sqlite_sequence`` keeps the largest one used).

SQLite cannot change a table's key in place, so the table is rebuilt (alembic's batch mode:
create the new table, copy every row with its id, drop the old one, rename, re-create the
indexes). Copying the rows sets the table's ``sqlite_sequence`` entry to the largest id kept,
so new ids continue above it. The table is spelled out as 0001 and 0002 made it (no
reflection), so ``alembic upgrade --sql`` prints the DDL too. PostgreSQL's ``BIGSERIAL``
sequence never reuses an id: there the migration does nothing.

The downgrade rebuilds the table without ``AUTOINCREMENT`` (keeping its rows and indexes;
SQLite drops the table's ``sqlite_sequence`` entry with the old table).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TIME = sa.DateTime(timezone=True)  # adapters.sqlschema.UTCDateTime


def _timeouts(autoincrement: bool) -> sa.Table:
    """``workflow_timeouts`` on SQLite as 0001 and 0002 made it, ``AUTOINCREMENT`` or not."""
    return sa.Table(
        "workflow_timeouts",
        sa.MetaData(),
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("workflow_name", sa.String(255), nullable=False),
        sa.Column("foreign_id", sa.Text(), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("idx", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("completed", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("expire_at", _TIME, nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Index("ix_workflow_timeouts_due", "workflow_name", "status", "completed", "expire_at"),
        sa.Index("ix_workflow_timeouts_run", "run_id", "status"),
        sqlite_autoincrement=autoincrement,
    )


def _rebuild(autoincrement: bool) -> None:
    if op.get_context().dialect.name != "sqlite":
        return
    with op.batch_alter_table(
        "workflow_timeouts",
        recreate="always",
        copy_from=_timeouts(not autoincrement),
        table_kwargs={"sqlite_autoincrement": autoincrement},
    ):
        pass  # the rebuild itself is the change


def upgrade() -> None:
    _rebuild(autoincrement=True)


def downgrade() -> None:
    _rebuild(autoincrement=False)
