"""circuitry's labeling stage: evidence-based labels for the heads and MLPs of a discovered circuit.

    from labeling import label_circuit
    labeled = label_circuit(circuit, model, task)              # heuristic, offline
    labeled = label_circuit(circuit, model, task, "openai")    # CIRCUITRY_LLM_BASE_URL / _MODEL
    labeled.save("labeled.json")

See docs/labeling.md."""

from .evidence import EvidenceConfig, collect_evidence
from .export import to_neuronpedia
from .label import circuit_components, label_circuit
from .llm import LLMClient, LLMConfig
from .schema import LABELED_SCHEMA_VERSION, ROLE_TAGS, LabeledCircuit, LabelRecord

__all__ = ["EvidenceConfig", "collect_evidence", "to_neuronpedia", "circuit_components", "label_circuit",
           "LLMClient", "LLMConfig", "LABELED_SCHEMA_VERSION", "ROLE_TAGS", "LabeledCircuit", "LabelRecord"]
