"""A workflow's status graph as JSON (``nodes`` and ``edges`` of ``GET /api/workflows``): the
same graph as its Mermaid text, for a client that draws it itself (the web UI does)."""

from __future__ import annotations

from typing import Any

from .._mermaid import _compensates, _fn
from .._workflow import Workflow
from ._models import GraphEdge, GraphNode

__all__ = ["graph_fields"]


def graph_fields(wf: Workflow[Any, Any]) -> dict[str, Any]:
    """``{"nodes": [...], "edges": [...]}``: one node per status of the graph (sorted by
    value; ``start`` on the default start, ``terminal`` where no transition leaves), one edge
    per arrow of :func:`workflow.mermaid` other than its ``[*]`` ones, in the same order and
    with the same labels (a saga's ``compensate (fn)`` and ``retries exhausted``; empty for
    a declared transition)."""
    eng = wf._engine
    status = eng.status_type
    graph = eng.graph
    terminal = set(graph.terminal_nodes)
    nodes = [
        GraphNode(
            value=int(n),
            name=status(n).name,
            start=n == int(eng.default_start),
            terminal=n in terminal,
        )
        for n in sorted(graph.nodes)
    ]
    edges: list[GraphEdge] = []
    for src, dsts in graph.edges:
        for dst in dsts:
            if dst != eng.compensated or not _compensates(eng, src):
                edges.append(GraphEdge(source=src, target=dst))
    for src, cfg in eng.steps.items():
        if cfg.compensation is not None:
            for dst in graph.transitions(src):
                if dst != eng.compensated:
                    label = f"compensate ({_fn(cfg.compensation)})"
                    edges.append(GraphEdge(source=dst, target=src, label=label))
    if eng.compensated is not None:
        for src, _ in graph.edges:
            if graph.allowed(src, eng.compensated) and _compensates(eng, src):
                edges.append(
                    GraphEdge(source=src, target=eng.compensated, label="retries exhausted")
                )
    return {"nodes": nodes, "edges": edges}
