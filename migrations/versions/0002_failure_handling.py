"""Failure handling: per-run retries, pause reasons, idempotency keys, timers by run.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03

``workflow_records`` and ``workflow_record_history`` keep each version's ``attempt`` (the try
of the status visit that runs next), ``retry_at`` (when a scheduled retry is due) and
``paused_by`` (why a paused run is paused); ``workflow_records`` keeps the run's
``idempotency_key``, unique per workflow. Partial indexes find due retries and used keys;
``workflow_timeouts`` gets an index by run for removing a run's timers when it leaves a
status. Existing rows read as attempt 1, nothing scheduled, no reason, no key.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TIME = sa.DateTime(timezone=True)  # adapters.sqlschema.UTCDateTime
_RETRYING = "retry_at IS NOT NULL"
_KEYED = "idempotency_key IS NOT NULL"


def upgrade() -> None:
    for table in ("workflow_records", "workflow_record_history"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("attempt", sa.Integer(), nullable=False, server_default="1"))
            batch.add_column(sa.Column("retry_at", _TIME, nullable=True))
            batch.add_column(sa.Column("paused_by", sa.Text(), nullable=False, server_default=""))
    with op.batch_alter_table("workflow_records") as batch:
        batch.add_column(sa.Column("idempotency_key", sa.String(255), nullable=True))
    op.create_index(
        "ix_workflow_records_retry_due",
        "workflow_records",
        ["workflow_name", "status", "retry_at"],
        sqlite_where=sa.text(_RETRYING),
        postgresql_where=sa.text(_RETRYING),
    )
    op.create_index(
        "uq_workflow_records_idempotency_key",
        "workflow_records",
        ["workflow_name", "idempotency_key"],
        unique=True,
        sqlite_where=sa.text(_KEYED),
        postgresql_where=sa.text(_KEYED),
    )
    op.create_index("ix_workflow_timeouts_run", "workflow_timeouts", ["run_id", "status"])


def downgrade() -> None:
    op.drop_index("ix_workflow_timeouts_run", "workflow_timeouts")
    op.drop_index("uq_workflow_records_idempotency_key", "workflow_records")
    op.drop_index("ix_workflow_records_retry_due", "workflow_records")
    with op.batch_alter_table("workflow_records") as batch:
        batch.drop_column("idempotency_key")
    for table in ("workflow_records", "workflow_record_history"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("paused_by")
            batch.drop_column("retry_at")
            batch.drop_column("attempt")
