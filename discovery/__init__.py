"""circuitry's discovery engine: edge-level circuit discovery directly on Hugging Face causal LMs.

    from discovery import load_model, load_task, discover
    model = load_model("path/or/hub-id")
    task = load_task("task.jsonl", tokenizer=model.tokenizer, vocab_size=model.vocab_size)
    circuit = discover(model, task, "eap-ig", top_n=200)
    circuit.save("circuit.json")
"""

from .circuit import SCHEMA_VERSION, Circuit
from .discover import discover, evaluate
from .errors import TaskError, UnsupportedModelError, UserError
from .evaluation import circuit_metrics, evaluate_circuit, faithfulness, faithfulness_curves
from .graph import Graph
from .methods import INTERVENTIONS, METHODS, Setup, score_edges
from .metrics import METRICS, Metric, get_metric, resolve_metric
from .models import SUPPORTED, LoadedModel, load_model, wrap_model
from .patching import Activations, run
from .selection import greedy, prune, threshold, top_n
from .tasks import Task, iter_batches, load_task, task_from_rows

__all__ = [
    "SCHEMA_VERSION", "Circuit", "discover", "evaluate", "TaskError", "UnsupportedModelError", "UserError",
    "circuit_metrics", "evaluate_circuit", "faithfulness", "faithfulness_curves", "Graph", "INTERVENTIONS",
    "METHODS", "Setup", "score_edges", "METRICS", "Metric", "get_metric", "resolve_metric", "SUPPORTED", "LoadedModel", "load_model",
    "wrap_model", "Activations", "run", "greedy", "prune", "threshold", "top_n", "Task", "iter_batches",
    "load_task", "task_from_rows",
]
