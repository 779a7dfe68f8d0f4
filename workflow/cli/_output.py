"""How runs are printed: a compact table, a run with its history, and JSON."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from workflow import Record
from workflow.admin import RunDetail

__all__ = ["StatusName", "detail_json", "detail_text", "record_json", "table", "when"]

StatusName = Callable[[Record], str]
"""The name of a record's status (a number when nothing knows its enum)."""

COLUMNS = ("RUN ID", "WORKFLOW", "FOREIGN ID", "STATUS", "RUN STATE", "VERSION", "UPDATED")


def when(t: datetime | None) -> str:
    """A time for people: UTC, to the second."""
    if t is None:
        return "-"
    return t.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def decoded(record: Record) -> Any:
    """The run's object as JSON data (its text when it is not JSON)."""
    try:
        return json.loads(record.object)
    except ValueError:
        return record.object.decode("utf-8", "replace")


def table(records: Sequence[Record], status_name: StatusName) -> str:
    """The runs as a table of aligned columns, one line each."""
    rows = [COLUMNS] + [
        (
            r.run_id,
            r.workflow_name,
            r.foreign_id,
            status_name(r),
            r.run_state.name,
            str(r.meta.version),
            when(r.updated_at),
        )
        for r in records
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def record_json(
    record: Record, status_name: StatusName, *, with_object: bool = True
) -> dict[str, Any]:
    """One run as JSON data (times in ISO 8601, UTC)."""
    meta: dict[str, Any] = {}
    for f in dataclasses.fields(record.meta):
        value = getattr(record.meta, f.name)
        if isinstance(value, datetime):
            value = _iso(value)
        elif isinstance(value, tuple):
            value = list(value)
        meta[f.name] = value
    out: dict[str, Any] = {
        "run_id": record.run_id,
        "workflow": record.workflow_name,
        "foreign_id": record.foreign_id,
        "status": record.status,
        "status_name": status_name(record),
        "run_state": record.run_state.name,
        "version": record.meta.version,
        "created_at": _iso(record.created_at),
        "updated_at": _iso(record.updated_at),
        "meta": meta,
    }
    if with_object:
        out["object"] = decoded(record)
    return out


def detail_json(detail: RunDetail, status_name: StatusName) -> dict[str, Any]:
    """A run and its history as JSON data: each version with what it changed."""
    out = record_json(detail.record, status_name)
    out["history"] = [
        {
            **record_json(v.record, status_name, with_object=False),
            "changes": [{"path": c.path, "before": c.before, "after": c.after} for c in v.changes],
        }
        for v in detail.history
    ]
    return out


def _value(v: Any) -> str:
    return json.dumps(v, ensure_ascii=False, sort_keys=True)


def detail_text(detail: RunDetail, status_name: StatusName) -> str:
    """A run for people: its record, its object (pretty JSON) and its history, each version
    with the fields it changed (``path: before -> after``)."""
    r = detail.record
    m = r.meta
    fields: list[tuple[str, str]] = [
        ("run id", r.run_id),
        ("workflow", r.workflow_name),
        ("foreign id", r.foreign_id),
        ("status", f"{status_name(r)} ({r.status})"),
        ("run state", r.run_state.name),
        ("version", str(m.version)),
        ("created", when(r.created_at)),
        ("updated", when(r.updated_at)),
    ]
    if m.run_state_reason:
        fields.append(("reason", m.run_state_reason))
    if m.paused_by:
        fields.append(("paused by", m.paused_by))
    if m.attempt != 1 or m.retry_at is not None:
        fields.append(("attempt", f"{m.attempt} (retry at {when(m.retry_at)})"))
    if m.parent_run_id:
        fields.append(("parent", f"{m.parent_workflow} {m.parent_run_id}"))
    if m.idempotency_key:
        fields.append(("idempotency key", m.idempotency_key))
    width = max(len(k) for k, _ in fields)
    lines = [f"{k.ljust(width)}  {v}" for k, v in fields]
    lines += ["", "object:", json.dumps(decoded(r), indent=2, ensure_ascii=False, sort_keys=True)]
    lines += ["", f"history ({len(detail.history)} versions):"]
    for i, v in enumerate(detail.history):
        vr = v.record
        head = f"  v{vr.meta.version}  {when(vr.updated_at)}  {status_name(vr)}"
        head += f"  {vr.run_state.name}"
        if vr.meta.paused_by:
            head += f"  paused by: {vr.meta.paused_by}"
        if vr.meta.run_state_reason:
            head += f"  reason: {vr.meta.run_state_reason}"
        lines.append(head)
        for c in v.changes:
            if i == 0:
                lines.append(f"      {c.path} = {_value(c.after)}")
            else:
                lines.append(f"      {c.path}: {_value(c.before)} -> {_value(c.after)}")
    return "\n".join(lines)
