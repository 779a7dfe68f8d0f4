"""Small shared fixtures for engine tests: a status enum, an object type and a builder."""

from __future__ import annotations

import enum
import os
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from workflow import Builder, Workflow
from workflow.adapters.memrecordstore import MemRecordStore
from workflow.adapters.memrolescheduler import MemRoleScheduler
from workflow.adapters.memstreamer import MemStreamer
from workflow.adapters.memtimeoutstore import MemTimeoutStore
from workflow.testing import FakeClock


class Status(enum.IntEnum):
    UNKNOWN = 0
    STARTED = 1
    MIDDLE = 2
    DONE = 3
    OTHER_END = 4


class Obj(BaseModel):
    count: int = 0
    note: str = ""


def build(
    b: Builder[Obj, Status],
    clock: FakeClock,
    registry: CollectorRegistry,
    store: MemRecordStore | None = None,
    **kwargs: Any,
) -> Workflow[Obj, Status]:
    """Build on fresh memory adapters driven by ``clock``."""
    kwargs.setdefault("timeout_store", MemTimeoutStore(clock))
    return b.build(
        MemStreamer(clock),
        store or MemRecordStore(),
        MemRoleScheduler(),
        clock=clock,
        metrics_registry=registry,
        **kwargs,
    )


def need_service(value: str, message: str) -> str:
    """``value`` (a service's address or path, from the environment) when it is set; else
    the test skips with ``message``, and fails in CI (where every service is started)."""
    if value:
        return value
    if os.environ.get("CI"):
        pytest.fail(message + ": it is missing in CI")
    pytest.skip(message)
