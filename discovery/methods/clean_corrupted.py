"""Clean-corrupted (Hanna et al. 2024): gradients averaged over the clean and the corrupted input."""

from .common import Setup
from .input_path import input_path_scores


def clean_corrupted(setup: Setup):
    return input_path_scores(setup, [0.0, 1.0], "clean-corrupted")
