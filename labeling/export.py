"""A labeled circuit as a Neuronpedia / circuit-tracer attribution graph: a thin wrapper over
`discovery.io.export.neuronpedia` (which reads the label records from the circuit document itself, so
discovery never imports labeling). The format is described there and in docs/circuit-format.md."""

from __future__ import annotations

import json
import os
from pathlib import Path

from discovery.core.circuit import Circuit
from discovery.io.export.neuronpedia import to_neuronpedia as _to_neuronpedia

from .schema import LabeledCircuit


def to_neuronpedia(circuit: Circuit | LabeledCircuit, slug: str | None = None, scan: str | None = None) -> dict:
    return _to_neuronpedia(circuit.model_dump(mode="json"), scan=scan, slug=slug)


def save_neuronpedia(circuit: Circuit | LabeledCircuit, path: str | os.PathLike, slug: str | None = None,
                     scan: str | None = None) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(to_neuronpedia(circuit, slug, scan), indent=1))
