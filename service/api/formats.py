"""Other shapes of a stored circuit for `GET /v1/circuits/{id}?format=`: the formats of
`discovery.io.export` (MIB / EAP-IG JSON and .pt, Neuronpedia / circuit-tracer graph, networkx
node-link, GraphML), rendered from the stored circuit document (its labels included)."""

from __future__ import annotations

import json

from discovery.io.export import FORMATS, export

__all__ = ["FORMATS", "render"]


def render(content: bytes, fmt: str) -> tuple[bytes, str]:
    """(body, media type) of the stored circuit JSON `content` in format `fmt`; a circuit the format
    cannot express raises UserError (e.g. Neuronpedia needs the circuit's representative row)."""
    if fmt == "json":
        return content, FORMATS["json"].media_type
    body = export(json.loads(content), fmt)
    return (body if isinstance(body, bytes) else body.encode()), FORMATS[fmt].media_type
