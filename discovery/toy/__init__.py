"""Small models with known mechanisms: planted circuits (and, in progress, trained toy models)."""

from .planted import FAMILIES, Planted, ablation_effects, default_circuit, plant, planted_config

__all__ = ["FAMILIES", "Planted", "ablation_effects", "default_circuit", "plant", "planted_config"]
