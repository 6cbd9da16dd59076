"""Confidence intervals of held-out scores and the rule that makes a label `ok`.

A score's 95% interval is the stratified percentile bootstrap: positives and negatives resampled with
replacement separately (their counts kept), the statistic recomputed, 1000 resamples, seeded (for AUC
from the matrix of positive-over-negative wins, so a resample costs one weighted sum).

A label is `ok` only when every held-out score it has beats its random-label baseline by at least
MARGIN (value - baseline >= MARGIN) and the lower end of the score's interval lies above the
baseline; with no held-out score at all it is not `ok` either."""

from __future__ import annotations

import numpy as np

MARGIN = 0.10  # AUC / balanced-accuracy points above the random-label baseline
N_BOOT = 1000


def _resample_weights(n: int, rng) -> np.ndarray:
    """[N_BOOT, n] how often each item is drawn in each resample of n with replacement."""
    draws = rng.integers(0, n, size=(N_BOOT, n))
    return np.stack([np.bincount(d, minlength=n) for d in draws]).astype(np.float64)


def _split(y, s):
    y = np.asarray(y, dtype=bool)
    s = np.asarray(s, dtype=np.float64)
    return s[y], s[~y]


def _interval(vals) -> tuple[float, float]:
    lo, hi = np.percentile(vals, [2.5, 97.5])
    return round(float(lo), 6), round(float(hi), 6)


def auc(y, scores) -> float | None:
    """ROC AUC as the Mann-Whitney statistic: P(positive scored above a negative) + half the ties
    (equal to sklearn's roc_auc_score, tests/test_labeling.py; without its per-call validation)."""
    pos, neg = _split(y, scores)
    if not len(pos) or not len(neg):
        return None
    return float(((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean())


def auc_ci(y, scores, seed: int = 0):
    """95% bootstrap interval of ROC AUC (ties count one half, as sklearn's roc_auc_score)."""
    pos, neg = _split(y, scores)
    if not len(pos) or not len(neg):
        return None, None
    rng = np.random.default_rng(int(seed))
    wins = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])  # [P, N]
    wp, wn = _resample_weights(len(pos), rng), _resample_weights(len(neg), rng)
    return _interval(np.einsum("bp,pn,bn->b", wp, wins, wn) / (len(pos) * len(neg)))


def bacc_ci(y, predicted, seed: int = 0):
    """95% bootstrap interval of balanced accuracy of yes/no predictions (yes: p >= 0.5)."""
    pos, neg = _split(y, predicted)
    if not len(pos) or not len(neg):
        return None, None
    rng = np.random.default_rng(int(seed))
    wp, wn = _resample_weights(len(pos), rng), _resample_weights(len(neg), rng)
    tpr = wp @ (pos >= 0.5).astype(np.float64) / len(pos)
    tnr = wn @ (neg < 0.5).astype(np.float64) / len(neg)
    return _interval((tpr + tnr) / 2)


def sentence(text: str) -> str:
    """One sentence: capitalised, ending with a full stop."""
    text = " ".join(str(text).split())
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


def beats_baseline(score) -> tuple[bool, str]:
    """(passes, why) for one ScoreResult under the MARGIN rule; why is one sentence."""
    name = score.scorer
    note = f" ({score.note})" if score.note else ""
    if score.value is None:
        return False, sentence(f"no held-out {name} score: {score.note or 'there was nothing to score'}")
    if score.random_baseline is None:
        return False, sentence(f"the held-out {name} score {score.value:.2f} has no random-label baseline to compare "
                               f"with{note}")
    ci = f" (95% CI {score.ci_low:.2f}-{score.ci_high:.2f})" if score.ci_low is not None else ""
    text = f"the held-out {name} score {score.value:.2f}{ci} vs random label {score.random_baseline:.2f}"
    if score.value - score.random_baseline < MARGIN:
        return False, sentence(f"{text} is not {MARGIN:.2f} above it{note}")
    if score.ci_low is None or score.ci_low <= score.random_baseline:
        return False, sentence(f"{text}: its 95% interval reaches the baseline")
    return True, sentence(text)
