"""The workflow SQL adapters' tables, as in adapters/sqlschema.py.

Revision ID: 0001
Revises:
Create Date: 2026-11-22

Column types are spelled as the DDL they produce, so this migration does not change when the
Python types in adapters.sqlschema do: ``UTCDateTime`` is ``DateTime(timezone=True)``
(``timestamptz`` on PostgreSQL, ``DATETIME`` on SQLite) and ``JSONBytes`` is ``jsonb`` on
PostgreSQL and ``TEXT`` elsewhere.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite: INTEGER PRIMARY KEY
_TIME = sa.DateTime(timezone=True)  # adapters.sqlschema.UTCDateTime
_JSON = sa.Text().with_variant(postgresql.JSONB(), "postgresql")  # adapters.sqlschema.JSONBytes
_UNFINISHED = "run_state IN (1, 2, 3)"  # Initiated, Running, Paused

_TABLES = (
    "workflow_records",
    "workflow_record_history",
    "workflow_outbox",
    "workflow_timeouts",
    "workflow_events",
    "workflow_cursors",
    "workflow_leases",
)


def upgrade() -> None:
    op.create_table(
        "workflow_records",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("workflow_name", sa.String(255), nullable=False),
        sa.Column("foreign_id", sa.Text(), nullable=False),
        sa.Column("foreign_key", sa.String(64), nullable=False),
        sa.Column("run_state", sa.SmallInteger(), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("object", _JSON, nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("updated_at", _TIME, nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("run_state_reason", sa.Text(), nullable=False, server_default=""),
        sa.Column("status_description", sa.Text(), nullable=False, server_default=""),
        sa.Column("trace_origin", sa.Text(), nullable=False, server_default=""),
        sa.UniqueConstraint("run_id", name="uq_workflow_records_run_id"),
    )
    op.create_index("ix_workflow_records_key", "workflow_records", ["foreign_key", "id"])
    op.create_index("ix_workflow_records_workflow", "workflow_records", ["workflow_name", "id"])
    op.create_index("ix_workflow_records_run_state", "workflow_records", ["run_state"])
    # At most one unfinished run per (workflow, foreign id), enforced by the database.
    op.create_index(
        "uq_workflow_records_unfinished",
        "workflow_records",
        ["foreign_key"],
        unique=True,
        sqlite_where=sa.text(_UNFINISHED),
        postgresql_where=sa.text(_UNFINISHED),
    )

    op.create_table(
        "workflow_record_history",
        sa.Column("run_id", sa.String(64), primary_key=True),
        sa.Column("version", sa.Integer(), primary_key=True),
        sa.Column("run_state", sa.SmallInteger(), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("object", _JSON, nullable=False),
        sa.Column("updated_at", _TIME, nullable=False),
        sa.Column("run_state_reason", sa.Text(), nullable=False, server_default=""),
        sa.Column("status_description", sa.Text(), nullable=False, server_default=""),
    )

    op.create_table(
        "workflow_outbox",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(128), nullable=False),
        sa.Column("workflow_name", sa.String(255), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.UniqueConstraint("event_id", name="uq_workflow_outbox_event_id"),
    )
    op.create_index("ix_workflow_outbox_workflow_id", "workflow_outbox", ["workflow_name", "id"])

    op.create_table(
        "workflow_timeouts",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("workflow_name", sa.String(255), nullable=False),
        sa.Column("foreign_id", sa.Text(), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("idx", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("completed", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("expire_at", _TIME, nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
    )
    op.create_index(
        "ix_workflow_timeouts_due",
        "workflow_timeouts",
        ["workflow_name", "status", "completed", "expire_at"],
    )

    op.create_table(
        "workflow_events",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("topic", sa.String(255), nullable=False),
        sa.Column("foreign_id", sa.Text(), nullable=False),
        sa.Column("type", sa.Integer(), nullable=False),
        sa.Column("headers", _JSON, nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
    )
    op.create_index("ix_workflow_events_topic_id", "workflow_events", ["topic", "id"])

    op.create_table(
        "workflow_cursors",
        sa.Column("topic", sa.String(255), primary_key=True),
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", _TIME, nullable=False),
    )

    op.create_table(
        "workflow_leases",
        sa.Column("role", sa.String(255), primary_key=True),
        sa.Column("holder", sa.String(128), nullable=False),
        sa.Column("token", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", _TIME, nullable=False),
    )


def downgrade() -> None:
    for table in reversed(_TABLES):
        op.drop_table(table)  # drops the table's indexes and constraints with it
