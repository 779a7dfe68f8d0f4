"""The status graph as a Mermaid ``stateDiagram-v2``."""

from __future__ import annotations

from typing import Any

from ._options import retry_policy
from ._workflow import Workflow

__all__ = ["mermaid"]


def _label(name: str) -> str:
    return " ".join(part.capitalize() for part in name.split("_"))


def _fn(fn: Any) -> str:
    return str(getattr(fn, "__name__", None) or type(fn).__name__)


def _compensates(eng: Any, status: int) -> bool:
    cfg = eng.steps.get(status)
    return cfg is not None and retry_policy(cfg.options, eng.defaults).on_exhausted == "compensate"


def mermaid(wf: Any, direction: str = "LR") -> str:
    """The workflow's status graph as Mermaid text: one node per status, ``[*]`` arrows into
    the default start and out of every terminal status, one arrow per declared transition.
    A saga adds an arrow back from each destination of a step with a compensation, labelled
    ``compensate (fn)``, and one labelled ``retries exhausted`` from each step whose retry
    policy compensates to the ``compensate_to`` status."""
    if not isinstance(wf, Workflow):
        raise ValueError(f"mermaid() needs a built Workflow, got {type(wf).__name__}")
    if direction not in ("LR", "RL", "TB", "BT"):
        raise ValueError("direction must be one of LR, RL, TB, BT")
    eng = wf._engine
    status = eng.status_type
    lines = [
        "---",
        f"title: Workflow diagram of {wf.name}",
        "---",
        "stateDiagram-v2",
        f"\tdirection {direction}",
        "",
    ]
    for node in sorted(eng.graph.nodes):
        lines.append(f"\t{node}: {_label(status(node).name)}")
    lines.append("")
    lines.append(f"\t[*] --> {int(eng.default_start)}")
    for src, dsts in eng.graph.edges:
        for dst in dsts:
            if dst != eng.compensated or not _compensates(eng, src):
                lines.append(f"\t{src} --> {dst}")
    for src, cfg in eng.steps.items():  # the saga: what undoes each step
        if cfg.compensation is not None:
            for dst in eng.graph.transitions(src):
                if dst != eng.compensated:
                    lines.append(f"\t{dst} --> {src}: compensate ({_fn(cfg.compensation)})")
    if eng.compensated is not None:
        for src, _ in eng.graph.edges:
            if eng.graph.allowed(src, eng.compensated) and _compensates(eng, src):
                lines.append(f"\t{src} --> {eng.compensated}: retries exhausted")
    for node in eng.graph.terminal_nodes:
        lines.append(f"\t{node} --> [*]")
    return "\n".join(lines) + "\n"
