"""circuitry's labeling stage: evidence-based labels for the heads and MLPs of a discovered circuit.

    from labeling import label_circuit
    labeled = label_circuit(circuit, model, task)              # heuristic, offline
    labeled = label_circuit(circuit, model, task, "openai")    # CIRCUITRY_LLM_BASE_URL / _MODEL
    labeled.save("labeled.json")

See docs/labeling.md."""

from discovery.core.lazy import lazy_exports

# name -> submodule, loaded on first use (PEP 562): `circuitry --help` imports labeling.cli without torch.
_EXPORTS = {
    "evidence": ["EvidenceConfig", "collect_evidence"],
    "export": ["to_neuronpedia"],
    "label": ["circuit_components", "label_circuit"],
    "llm": ["LLMClient", "LLMConfig"],
    "schema": ["LABELED_SCHEMA_VERSION", "ROLE_TAGS", "LabeledCircuit", "LabelRecord"],
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


__all__ = ["EvidenceConfig", "collect_evidence", "to_neuronpedia", "circuit_components", "label_circuit",
           "LLMClient", "LLMConfig", "LABELED_SCHEMA_VERSION", "ROLE_TAGS", "LabeledCircuit", "LabelRecord"]
