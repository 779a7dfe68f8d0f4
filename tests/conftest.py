"""Shared fixtures. Each test gets its own Prometheus registry so metrics never leak."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from prometheus_client import CollectorRegistry

from workflow.testing import FakeClock


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2023, 4, 9, 8, 30, tzinfo=UTC))
