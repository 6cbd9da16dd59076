"""circuitry's labeling stage: evidence-based labels for the heads and MLPs of a discovered circuit.

    from labeling import label_circuit
    labeled = label_circuit(circuit, model, task)              # heuristic, offline
    labeled = label_circuit(circuit, model, task, "openai")    # CIRCUITRY_LLM_BASE_URL / _MODEL
    labeled.save("labeled.json")

See docs/labeling.md."""

import importlib

# name -> submodule, loaded on first use (PEP 562): `circuitry --help` imports labeling.cli without torch.
_EXPORTS = {
    "evidence": ["EvidenceConfig", "collect_evidence"],
    "export": ["to_neuronpedia"],
    "label": ["circuit_components", "label_circuit"],
    "llm": ["LLMClient", "LLMConfig"],
    "schema": ["LABELED_SCHEMA_VERSION", "ROLE_TAGS", "LabeledCircuit", "LabelRecord"],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'labeling' has no attribute '{name}'")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + list(_WHERE))


__all__ = ["EvidenceConfig", "collect_evidence", "to_neuronpedia", "circuit_components", "label_circuit",
           "LLMClient", "LLMConfig", "LABELED_SCHEMA_VERSION", "ROLE_TAGS", "LabeledCircuit", "LabelRecord"]
