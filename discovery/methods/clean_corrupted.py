"""Clean-corrupted (Hanna et al. 2024): gradients averaged over the clean and the corrupted input.
qk_fix: edges into q/k slots through the exact attention pattern (qk.py), with the pattern gradient
taken at the clean run (alpha = 1), as for every method: input_path.py says why not the average over
both ends."""

from .common import Setup
from .input_path import input_path_scores


def clean_corrupted(setup: Setup, qk_fix: bool = False):
    return input_path_scores(setup, [0.0, 1.0], "clean-corrupted", qk_fix=qk_fix)
