"""The names users type, checkable before torch or transformers load: method, metric, intervention and
built-in task names, and model references (a local directory, a hub id, or a shipped toy model
`toy:NAME` with an optional checkpoint revision). Method names come from the method registry
(registry.py). The heavy tables (discovery.methods.METHODS, discovery.model.metrics.METRICS,
discovery.task_library.TASKS) hold exactly these names (tests/test_cli.py checks it), so
`circuitry --help` and argument errors answer without importing them."""

from __future__ import annotations

import os

from . import registry
from .errors import UserError

METHOD_NAMES = registry.names("score")  # edge scorers
ACDC_METHODS = registry.names("acdc")  # methods that decide edges themselves (then --tau)
LEARNED_METHODS = registry.names("learned")  # methods that learn an edge mask (then --sparsity or --lam)
AUTO_METHOD = registry.DEFAULT_METHOD  # the default pipeline (discovery/pipeline/auto.py): EAP-IG + QK fix, faithfulness target, verification
ALL_METHODS = registry.names()  # every method, in the order users see them
METRIC_NAMES = ("logit_diff", "prob_diff", "kl")
INTERVENTIONS = ("patching", "zero", "mean")  # what an edge outside the circuit carries
LEVELS = ("edge", "node", "neuron")  # what discover() scores and selects (discovery/pipeline/levels.py)
TASK_NAMES = ("ioi", "greater-than", "induction", "docstring", "subject-verb-agreement", "capital-country")

TOY_MODELS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "toy", "models")


def toy_model_dir(name: str, revision: str | None = None) -> str:
    """The directory of a shipped toy model `toy:NAME`, or of its checkpoint `revision` (a UserError if unknown)."""
    toy = name[len("toy:"):]
    names = sorted(d for d in os.listdir(TOY_MODELS) if os.path.isfile(os.path.join(TOY_MODELS, d, "config.json"))) \
        if os.path.isdir(TOY_MODELS) else []
    if toy not in names:
        raise UserError(f"unknown toy model '{name}'; available: {', '.join('toy:' + n for n in names) or 'none'}")
    path = os.path.join(TOY_MODELS, toy)
    if revision is None:
        return path
    ckpts = os.path.join(path, "checkpoints")
    revs = sorted(d for d in os.listdir(ckpts) if os.path.isfile(os.path.join(ckpts, d, "config.json"))) \
        if os.path.isdir(ckpts) else []
    if revision not in revs:
        raise UserError(f"toy model '{name}' has no revision '{revision}'; available: {', '.join(revs) or 'none'}")
    return os.path.join(ckpts, revision)


def check_model_ref(name_or_path: str, revision: str | None = None) -> None:
    """A UserError now for a toy name or revision that does not exist, or for something that reads as a
    local path (starts with '.', '/' or '~', or has two or more '/') but is no directory. A hub id is
    only checked when it is loaded."""
    if name_or_path.startswith("toy:"):
        toy_model_dir(name_or_path, revision)
        return
    looks_like_path = name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1
    if not os.path.isdir(name_or_path) and (looks_like_path or os.path.exists(name_or_path)):
        raise UserError(f"model directory '{name_or_path}' does not exist (give a directory with config.json "
                        "and weights, or a hub id such as EleutherAI/pythia-70m)")
