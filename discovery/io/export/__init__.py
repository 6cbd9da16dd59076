"""Other shapes of a circuit file, for the tools people already use, and MIB / EAP-IG graphs read back.

One module per format; every exporter takes the circuit JSON as a dict (plain or labeled: the label
records are read from the document itself, so discovery never imports the labeling package) and
returns the exported document. `export(data, fmt)` picks the module; `FORMATS` lists what each format
is, its media type and file suffix (the CLI's `circuitry export` and the API's `?format=` share it).

Formats (exact definitions in each module and in docs/circuit-format.md):
- `json`: the circuit file itself.
- `mib`: the EAP-IG library's `Graph.to_json` layout, the file MIB's evaluation loads (`mib.py`).
- `mib-pt`: the same graph in `Graph.to_pt`'s torch layout (`mib_pt.py`).
- `neuronpedia`: the attribution-graph JSON of Neuronpedia and circuit-tracer (`neuronpedia.py`).
- `node-link`: networkx node-link JSON, a MultiDiGraph with one edge per reader slot (`node_link.py`).
- `graphml`: the same multigraph as GraphML, scalar attributes only (`graphml.py`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ...core.errors import UserError


@dataclass(frozen=True)
class Format:
    name: str
    media_type: str
    suffix: str
    binary: bool
    help: str


FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("json", "application/json", ".json", False, "the circuit file itself"),
    Format("mib", "application/json", ".json", False, "MIB / EAP-IG Graph.to_json layout"),
    Format("mib-pt", "application/octet-stream", ".pt", True, "MIB / EAP-IG Graph.to_pt layout (torch.save)"),
    Format("neuronpedia", "application/json", ".json", False, "Neuronpedia / circuit-tracer attribution graph"),
    Format("node-link", "application/json", ".json", False, "networkx node-link JSON (MultiDiGraph)"),
    Format("graphml", "application/xml", ".graphml", False, "GraphML (networkx MultiDiGraph, scalar attributes)"),
)}


def export(data: dict, fmt: str, **options: Any) -> str | bytes:
    """The circuit document `data` in format `fmt`: text (JSON, XML) or bytes (`mib-pt`).

    Options: `d_model` (mib, mib-pt: when the circuit file does not carry it), `scan` and `slug`
    (neuronpedia), `all_edges` (node-link, graphml: every edge of the graph, not only the circuit's)."""
    if fmt not in FORMATS:
        raise UserError(f"format '{fmt[:40]}' is not known; use one of {', '.join(FORMATS)}")
    if fmt == "json":
        return json.dumps(data, indent=1)
    if fmt == "mib":
        from .mib import to_mib
        return json.dumps(to_mib(data, d_model=options.get("d_model")))
    if fmt == "mib-pt":
        from .mib_pt import to_mib_pt
        return to_mib_pt(data, d_model=options.get("d_model"))
    if fmt == "neuronpedia":
        from .neuronpedia import to_neuronpedia
        return json.dumps(to_neuronpedia(data, scan=options.get("scan"), slug=options.get("slug")), indent=1)
    if fmt == "node-link":
        from .node_link import to_node_link
        return json.dumps(to_node_link(data, all_edges=bool(options.get("all_edges"))))
    from .graphml import to_graphml
    return to_graphml(data, all_edges=bool(options.get("all_edges")))
