"""Prometheus metrics with luno/workflow's names, labels and buckets, on any registry."""

from __future__ import annotations

import weakref

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["Metrics", "metrics_for"]

_PROCESS = ("workflow_name", "process_name")


class Metrics:
    """The engine's metrics. One instance per registry (see :func:`metrics_for`)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.process_lag = Gauge(
            "workflow_process_lag_seconds",
            "Lag between now and the current event timestamp in seconds",
            _PROCESS,
            registry=registry,
        )
        self.process_lag_alert = Gauge(
            "workflow_process_lag_alert",
            "Whether or not the consumer lag crosses its alert threshold",
            _PROCESS,
            registry=registry,
        )
        self.process_states = Gauge(
            "workflow_process_states",
            "The current states of all the processes",
            _PROCESS,
            registry=registry,
        )
        self.process_latency = Histogram(
            "workflow_process_latency_seconds",
            "Event loop latency in seconds",
            _PROCESS,
            buckets=(0.01, 0.1, 1, 5, 10, 60, 300),
            registry=registry,
        )
        self.process_errors = Counter(
            "workflow_process_error_count",
            "Number of errors processing events",
            _PROCESS,
            registry=registry,
        )
        self.process_skipped = Counter(
            "workflow_process_skipped_events_count",
            "Number of events skipped by consumer",
            (*_PROCESS, "reason"),
            registry=registry,
        )
        self.retries_scheduled = Counter(
            "workflow_retries_scheduled",
            "Failed attempts whose retry was scheduled for the run alone",
            _PROCESS,
            registry=registry,
        )
        self.retry_attempts = Counter(
            "workflow_retry_attempts",
            "Attempts after the first (retries run when due), by whether they succeeded",
            (*_PROCESS, "outcome"),
            registry=registry,
        )
        self.retries_exhausted = Counter(
            "workflow_retries_exhausted",
            "Runs whose retry policy gave up (attempts ran out or a non-retryable error), "
            "by what was done (pause, cancel, or the status moved to)",
            (*_PROCESS, "action"),
            registry=registry,
        )
        self.stranded_runs = Gauge(
            "workflow_stranded_runs",
            "Unfinished runs at a status the workflow's graph no longer has (found at start)",
            ("workflow_name", "status"),
            registry=registry,
        )
        self.run_state_changes = Counter(
            "workflow_run_state_changes",
            "The number of workflow run state changes going from state to a new state",
            ("workflow_name", "previous_run_state", "current_run_state"),
            registry=registry,
        )


_by_registry: weakref.WeakKeyDictionary[CollectorRegistry, Metrics] = weakref.WeakKeyDictionary()


def metrics_for(registry: CollectorRegistry | None = None) -> Metrics:
    """The metrics registered on ``registry`` (Prometheus' default one when ``None``),
    created on first use so that any number of workflows can share a registry."""
    reg = REGISTRY if registry is None else registry
    m = _by_registry.get(reg)
    if m is None:
        m = _by_registry[reg] = Metrics(reg)
    return m
