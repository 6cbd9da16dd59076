"""EAP (Syed et al. 2023): one corrupted forward, one clean forward and backward."""

from .common import Setup
from .input_path import input_path_scores


def eap(setup: Setup):
    return input_path_scores(setup, [1.0], "eap")
