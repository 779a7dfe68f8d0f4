"""Every background process of a workflow, assembled (the layer above the consumers and the
timeout processes)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._consumers import (
    child_finished_process,
    compensation_process,
    connector_processes,
    delete_process,
    hook_processes,
    outbox_process,
    pause_retry_process,
    step_processes,
)
from ._process import Process
from ._timeouts import timeout_processes

if TYPE_CHECKING:
    from ._engine import Engine

__all__ = ["build_processes"]


def build_processes(wf: Engine[Any, Any]) -> list[Process]:
    """The processes ``run()`` starts (schedules are added by the workflow as they come)."""
    procs: list[Process] = []
    procs.extend(step_processes(wf))
    procs.extend(timeout_processes(wf))
    procs.extend(connector_processes(wf))
    procs.extend(hook_processes(wf))
    if any(cfg.children_done for cfg in wf.steps.values()):
        procs.append(child_finished_process(wf))
    if wf.compensated is not None or any(c.compensation for c in wf.steps.values()):
        procs.append(compensation_process(wf))
    if wf.outbox is not None:
        procs.append(outbox_process(wf))
    procs.append(delete_process(wf))
    if wf.pause_retry is not None:
        procs.append(pause_retry_process(wf))
    return procs
