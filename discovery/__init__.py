"""circuitry's discovery engine: edge-level circuit discovery directly on Hugging Face causal LMs.

    from discovery import load_model, load_task, discover
    model = load_model("path/or/hub-id")
    circuit = discover(model, "ioi", "eap-ig", top_n=200)   # a built-in task by name, or a JSONL file's path
    task = load_task("task.jsonl", tokenizer=model.tokenizer, vocab_size=model.vocab_size)   # or load it first
    circuit.save("circuit.json")
"""

from .core.lazy import lazy_exports

# The engine's layers (docs/architecture.md): core < model (and task_library) < engine < methods <
# pipeline < io (and toy) < cli; each sub-package imports only the ones before it (tests/test_layering.py).
# name -> submodule; loaded on first use (PEP 562), so `import discovery` (and the CLI's --help) stays
# light: torch and transformers load only when a name that needs them is used.
_EXPORTS = {
    "core.circuit": ["SCHEMA_VERSION", "Circuit"],
    "pipeline.discover": ["discover", "evaluate"],
    "core.errors": ["TaskError", "UnsupportedModelError", "UserError"],
    "pipeline.evaluation": ["circuit_metrics", "evaluate_circuit", "faithfulness", "faithfulness_curves"],
    "core.graph": ["Graph"],
    "methods": ["INTERVENTIONS", "METHODS", "Setup", "score_edges"],
    "model.metrics": ["METRICS", "Metric", "get_metric", "resolve_metric"],
    "model.adapters": ["SUPPORTED", "LoadedModel", "load_model", "wrap_model"],
    "engine.patching": ["Activations", "run"],
    "pipeline.selection": ["greedy", "prune", "threshold", "top_n"],
    "model.tasks": ["Task", "iter_batches", "task_from_rows"],
    "task_library": ["load_task"],  # a JSONL file or a built-in task name (discovery.model.tasks.load_task: files only)
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


__all__ = [
    "SCHEMA_VERSION", "Circuit", "discover", "evaluate", "TaskError", "UnsupportedModelError", "UserError",
    "circuit_metrics", "evaluate_circuit", "faithfulness", "faithfulness_curves", "Graph", "INTERVENTIONS",
    "METHODS", "Setup", "score_edges", "METRICS", "Metric", "get_metric", "resolve_metric", "SUPPORTED", "LoadedModel", "load_model",
    "wrap_model", "Activations", "run", "greedy", "prune", "threshold", "top_n", "Task", "iter_batches",
    "load_task", "task_from_rows",
]
