"""The version after a record carries every field of ``Meta`` that it does not change: the
engine builds it field by field (faster than ``dataclasses.replace``), so a field added to
``Meta`` later must be added there too; this test fails until it is."""

from __future__ import annotations

import dataclasses
import enum
from datetime import UTC, datetime, timedelta

from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from workflow import Builder, Meta, Record, RunState
from workflow.adapters.memrecordstore import MemRecordStore
from workflow.adapters.memrolescheduler import MemRoleScheduler
from workflow.adapters.memstreamer import MemStreamer


class S(enum.IntEnum):
    UNKNOWN = 0
    A = 1
    B = 2


class Obj(BaseModel):
    n: int = 0


def test_next_version_keeps_every_meta_field_it_does_not_set() -> None:
    b: Builder[Obj, S] = Builder("versions", Obj, S)
    b.add_step(S.A, lambda run: S.B, S.B)
    wf = b.build(
        MemStreamer(), MemRecordStore(), MemRoleScheduler(), metrics_registry=CollectorRegistry()
    )
    at = datetime(2024, 1, 1, tzinfo=UTC)
    meta = Meta(
        run_state_reason="why",
        status_description="A",
        version=7,
        trace_origin="here:1",
        attempt=3,
        retry_at=at + timedelta(minutes=1),
        paused_by="retries exhausted",
        idempotency_key="key",
        parent_workflow="parent",
        parent_run_id="p-1",
        compensations=(1,),
        compensating=True,
    )
    unset = [f.name for f in dataclasses.fields(Meta) if getattr(meta, f.name) == f.default]
    assert not unset, f"give these Meta fields a non-default value in this test: {unset}"
    record = Record("versions", "f", "r", RunState.PAUSED, int(S.A), b"{}", at, at, meta)
    new = wf._engine.next_version(record, run_state=RunState.PAUSED, paused_by="step")
    set_by_next_version = {
        "status_description": "A",
        "version": 8,
        "retry_at": None,
        "paused_by": "step",
    }
    for f in dataclasses.fields(Meta):
        want = set_by_next_version.get(f.name, getattr(meta, f.name))
        assert getattr(new.meta, f.name) == want, f.name
