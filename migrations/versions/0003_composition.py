"""Composition: child workflows name their parent run, sagas keep their compensation stack.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04

``workflow_records`` keeps a child run's parent (``parent_workflow_name``, ``parent_run_id``;
NULL for a run without one: they are set when the run is created and never change), and a
partial index finds the children of a run. ``workflow_records`` and
``workflow_record_history`` keep each version's ``compensations`` (the saga's stack of
compensable statuses as text, oldest first: ``"3,5"``; NULL when empty) and ``compensating``
(whether the compensations are running). Existing rows read as runs without a parent, with an
empty stack, not compensating.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_CHILD = "parent_run_id IS NOT NULL"


def upgrade() -> None:
    with op.batch_alter_table("workflow_records") as batch:
        batch.add_column(sa.Column("parent_workflow_name", sa.String(255), nullable=True))
        batch.add_column(sa.Column("parent_run_id", sa.String(64), nullable=True))
    for table in ("workflow_records", "workflow_record_history"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("compensations", sa.Text(), nullable=True))
            batch.add_column(
                sa.Column("compensating", sa.Boolean(), nullable=False, server_default=sa.false())
            )
    op.create_index(
        "ix_workflow_records_parent",
        "workflow_records",
        ["parent_run_id"],
        sqlite_where=sa.text(_CHILD),
        postgresql_where=sa.text(_CHILD),
    )


def downgrade() -> None:
    op.drop_index("ix_workflow_records_parent", "workflow_records")
    for table in ("workflow_records", "workflow_record_history"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("compensating")
            batch.drop_column("compensations")
    with op.batch_alter_table("workflow_records") as batch:
        batch.drop_column("parent_run_id")
        batch.drop_column("parent_workflow_name")
