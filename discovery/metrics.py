"""Task metrics, per example, read at each row's own last token."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .errors import UserError
from .tasks import Batch


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum(-1) / mask.sum(-1)


def logit_diff(logits, batch: Batch, clean_logits=None):
    """Mean logit of the answers minus mean logit of the wrong answers."""
    logits = logits.float()
    right = _masked_mean(logits.gather(-1, batch.answers), batch.answer_mask)
    wrong = _masked_mean(logits.gather(-1, batch.wrongs), batch.wrong_mask)
    return right - wrong


def prob_diff(logits, batch: Batch, clean_logits=None):
    """Probability mass on the answers minus mass on the wrong answers."""
    probs = logits.float().softmax(-1)
    return (probs.gather(-1, batch.answers) * batch.answer_mask).sum(-1) - (
        probs.gather(-1, batch.wrongs) * batch.wrong_mask).sum(-1)


def kl(logits, batch: Batch, clean_logits=None):
    """KL(clean model || this output) of the next-token distributions."""
    clean = F.log_softmax(clean_logits.float(), -1)
    return (clean.exp() * (clean - F.log_softmax(logits.float(), -1))).sum(-1)


@dataclass(frozen=True)
class Metric:
    name: str
    fn: Callable
    higher_is_better: bool  # logit/prob diffs measure the behaviour; KL measures distance from it
    needs_clean_logits: bool = False

    def __call__(self, logits, batch, clean_logits=None) -> torch.Tensor:
        return self.fn(logits, batch, clean_logits)


METRICS = {
    "logit_diff": Metric("logit_diff", logit_diff, True),
    "prob_diff": Metric("prob_diff", prob_diff, True),
    "kl": Metric("kl", kl, False, needs_clean_logits=True),
}


def get_metric(name: str) -> Metric:
    if name not in METRICS:
        raise UserError(f"unknown metric '{name}'; choose one of {', '.join(METRICS)}")
    return METRICS[name]
