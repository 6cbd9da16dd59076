"""EAP-IG over inputs (Hanna et al. 2024): gradients averaged over embeddings interpolated from the
corrupted to the clean input. qk_fix: edges into q/k slots through the exact attention pattern (qk.py)."""

from ..core.errors import UserError
from .common import Setup
from .input_path import input_path_scores


def eap_ig(setup: Setup, steps: int = 5, qk_fix: bool = False):
    if steps < 1:
        raise UserError(f"--steps must be at least 1 (got {steps})")
    return input_path_scores(setup, [k / steps for k in range(1, steps + 1)], "eap-ig", qk_fix=qk_fix)
