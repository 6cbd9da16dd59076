"""Read what `circuitry export` and `circuitry view` take: a circuitry circuit file (plain or labeled,
validated, returned as its own JSON so labels and newer fields travel), or a MIB / EAP-IG graph
(`mib_import`), read over the graph its cfg describes."""

from __future__ import annotations

import json
import os
from pathlib import Path


def mib_as_circuit(path: str | os.PathLike):
    """The MIB / EAP-IG graph in `path` as a Circuit (no model: ungrouped heads), or None if the file
    is not one."""
    from ...core.graph import Graph
    from .mib_import import read_mib

    graph_file = read_mib(path)
    if graph_file is None:
        return None
    return graph_file.to_circuit(Graph(graph_file.n_layers, graph_file.n_heads, None, graph_file.parallel))


def load_document(path: str | os.PathLike) -> dict:
    from ...core.circuit import Circuit

    imported = mib_as_circuit(path)
    if imported is not None:
        return imported.model_dump(mode="json")
    Circuit.load(path)  # validation, with its one-line errors
    return json.loads(Path(path).read_text())
