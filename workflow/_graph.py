"""The status graph: declared ``from -> to`` edges."""

from __future__ import annotations

__all__ = ["Graph"]


class Graph:
    """Nodes and edges in insertion order. A node with no outgoing edge is terminal."""

    def __init__(self) -> None:
        self._edges: dict[int, list[int]] = {}
        self._nodes: list[int] = []
        self._seen: set[int] = set()
        self._from_order: list[int] = []

    def copy(self) -> Graph:
        """An independent copy (a built workflow keeps its own)."""
        g = Graph()
        g._edges = {k: list(v) for k, v in self._edges.items()}
        g._nodes = list(self._nodes)
        g._seen = set(self._seen)
        g._from_order = list(self._from_order)
        return g

    def _node(self, n: int) -> None:
        if n not in self._seen:
            self._seen.add(n)
            self._nodes.append(n)

    def add_node(self, n: int) -> None:
        """A node without edges of its own (terminal unless edges are added from it)."""
        self._node(n)

    def add(self, src: int, *dsts: int) -> None:
        self._node(src)
        if src not in self._from_order:
            self._from_order.append(src)
        edges = self._edges.setdefault(src, [])
        for d in dsts:
            self._node(d)
            if d not in edges:
                edges.append(d)

    @property
    def nodes(self) -> list[int]:
        return list(self._nodes)

    def is_node(self, n: int) -> bool:
        return n in self._seen

    def is_terminal(self, n: int) -> bool:
        return n in self._seen and not self._edges.get(n)

    def allowed(self, src: int, dst: int) -> bool:
        return dst in self._edges.get(src, ())

    def transitions(self, src: int) -> list[int]:
        return list(self._edges.get(src, ()))

    @property
    def from_order(self) -> list[int]:
        """Every ``from`` status in the order it was first added."""
        return list(self._from_order)

    @property
    def edges(self) -> list[tuple[int, list[int]]]:
        return [(src, list(dsts)) for src, dsts in self._edges.items() if dsts]

    @property
    def terminal_nodes(self) -> list[int]:
        return [n for n in self._nodes if self.is_terminal(n)]
