"""EAP (Syed et al. 2023): one corrupted forward, one clean forward and backward. qk_fix: edges into
q/k slots through the exact attention pattern (qk.py)."""

from .common import Setup
from .input_path import input_path_scores


def eap(setup: Setup, qk_fix: bool = False):
    return input_path_scores(setup, [1.0], "eap", qk_fix=qk_fix)
