"""Small models with known mechanisms: planted circuits (random weights, true edges by construction)
and the shipped trained toy models (`toy:induction`, `toy:ioi`; trained by `python -m
discovery.toy.train`, ground truth from their own attention patterns)."""

from ..model.adapters import TOY_MODELS, toy_model_dir
from .ground_truth import expected_edges, ground_truth, head_scores
from .planted import FAMILIES, Planted, ablation_effects, default_circuit, plant, planted_config
from .tokenizer import build_tokenizer

__all__ = ["FAMILIES", "Planted", "ablation_effects", "default_circuit", "plant", "planted_config",
           "TOY_MODELS", "toy_model_dir", "expected_edges", "ground_truth", "head_scores", "build_tokenizer"]
