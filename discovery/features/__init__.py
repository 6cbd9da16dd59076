"""Feature-level circuits: transcoders (discovery/features/transcoders.py) stand in for a model's MLPs;
attribution graphs over their features (attribution.py, replacement.py, pruning.py; docs/graph-format.md)."""

from .attribution import AttributionGraph, attribute
from .transcoders import Transcoders, load_transcoders, save_transcoders

__all__ = ["AttributionGraph", "attribute", "Transcoders", "load_transcoders", "save_transcoders"]
