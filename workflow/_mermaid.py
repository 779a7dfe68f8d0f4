"""The status graph as a Mermaid ``stateDiagram-v2``."""

from __future__ import annotations

from typing import Any

from ._workflow import Workflow

__all__ = ["mermaid"]


def _label(name: str) -> str:
    return " ".join(part.capitalize() for part in name.split("_"))


def mermaid(wf: Any, direction: str = "LR") -> str:
    """The workflow's status graph as Mermaid text: one node per status, ``[*]`` arrows into
    the default start and out of every terminal status, one arrow per declared transition."""
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
            lines.append(f"\t{src} --> {dst}")
    for node in eng.graph.terminal_nodes:
        lines.append(f"\t{node} --> [*]")
    return "\n".join(lines) + "\n"
