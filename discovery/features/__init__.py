"""Feature-level circuits: transcoders (discovery/features/transcoders.py) stand in for a model's MLPs."""

from .transcoders import Transcoders, load_transcoders, save_transcoders

__all__ = ["Transcoders", "load_transcoders", "save_transcoders"]
