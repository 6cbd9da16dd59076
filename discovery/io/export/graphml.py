"""GraphML of the node-link multigraph (`node_link.py`), written by networkx: every attribute is a
scalar (GraphML has no lists or dicts: role tags are comma-separated), edges keep their slot as the
GraphML edge id (networkx writes a MultiDiGraph's keys as `id`). `networkx.read_graphml(path)` reads
it back as a MultiDiGraph."""

from __future__ import annotations

import io

from .node_link import to_networkx


def to_graphml(data: dict, all_edges: bool = False) -> str:
    import networkx as nx

    buf = io.BytesIO()
    nx.write_graphml(to_networkx(data, all_edges=all_edges), buf, encoding="utf-8")
    return buf.getvalue().decode("utf-8")
