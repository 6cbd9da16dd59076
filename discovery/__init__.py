"""circuitry's discovery engine: edge-level circuit discovery directly on Hugging Face causal LMs.

    from discovery import load_model, load_task, discover
    model = load_model("path/or/hub-id")
    circuit = discover(model, "ioi", "eap-ig", top_n=200)   # a built-in task by name, or a JSONL file's path
    task = load_task("task.jsonl", tokenizer=model.tokenizer, vocab_size=model.vocab_size)   # or load it first
    circuit.save("circuit.json")
"""

from .lazy import lazy_exports
import sys
import types

# name -> submodule; loaded on first use (PEP 562), so `import discovery` (and the CLI's --help) stays
# light: torch and transformers load only when a name that needs them is used.
_EXPORTS = {
    "circuit": ["SCHEMA_VERSION", "Circuit"],
    "discover": ["discover", "evaluate"],
    "errors": ["TaskError", "UnsupportedModelError", "UserError"],
    "evaluation": ["circuit_metrics", "evaluate_circuit", "faithfulness", "faithfulness_curves"],
    "graph": ["Graph"],
    "methods": ["INTERVENTIONS", "METHODS", "Setup", "score_edges"],
    "metrics": ["METRICS", "Metric", "get_metric", "resolve_metric"],
    "models": ["SUPPORTED", "LoadedModel", "load_model", "wrap_model"],
    "patching": ["Activations", "run"],
    "selection": ["greedy", "prune", "threshold", "top_n"],
    "tasks": ["Task", "iter_batches", "task_from_rows"],
    "task_library": ["load_task"],  # a JSONL file or a built-in task name (discovery.tasks.load_task: files only)
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


class _Package(types.ModuleType):
    """Importing the submodule discovery.discover sets the package attribute `discover` to that module;
    the name belongs to the function, so that assignment is ignored."""

    def __setattr__(self, name, value):
        if name == "discover" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


__all__ = [
    "SCHEMA_VERSION", "Circuit", "discover", "evaluate", "TaskError", "UnsupportedModelError", "UserError",
    "circuit_metrics", "evaluate_circuit", "faithfulness", "faithfulness_curves", "Graph", "INTERVENTIONS",
    "METHODS", "Setup", "score_edges", "METRICS", "Metric", "get_metric", "resolve_metric", "SUPPORTED", "LoadedModel", "load_model",
    "wrap_model", "Activations", "run", "greedy", "prune", "threshold", "top_n", "Task", "iter_batches",
    "load_task", "task_from_rows",
]
