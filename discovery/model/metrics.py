"""Task metrics, per example, read at each row's own last token.

A metric is any callable `fn(logits, batch, clean_logits=None) -> Tensor[batch]` (the built-ins below,
or the user's own, given to discover()/evaluate()/Setup as a function or a `Metric`, or on the
command line as `--metric FILE.py:NAME`). What it is given:

- `logits`: [batch, vocab], the output at each row's own last real token (padding never reaches it);
  under gradient methods it carries gradients, so compute with torch ops.
- `batch` (discovery.model.tasks.Batch): `batch.answers` / `batch.wrongs` [batch, k] token ids, padded
  with 0 where a row has fewer, `batch.answer_mask` / `batch.wrong_mask` [batch, k] True at real
  entries, `batch.rows` the 0-based task row of each example.
- `clean_logits`: [batch, vocab], the full model's logits on the clean prompts (always given to a
  user metric; built-ins ask for it only when they need it).

It returns one value per example (shape [batch]); the pipeline averages. `higher_is_better` says
whether larger values mean more of the behaviour (logit diff) or not (a distance like KL); it sets
the sign convention of signed selection and of CPR. A user metric is named by its `__name__` (or
the `Metric`'s name) and that name is recorded in the circuit file.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, replace
from typing import Callable

import torch
import torch.nn.functional as F

from ..core.errors import UserError
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
        raise UserError(f"unknown metric '{name}'; choose one of {', '.join(METRICS)}, or FILE.py:NAME "
                        "for a function of your own")
    return METRICS[name]


class _Checked:
    """A user's metric function with its output checked on every call (cheap): one value per
    example, finite dtype, differentiable when the logits are. Errors are one-line UserErrors."""

    def __init__(self, fn: Callable, name: str):
        self.fn, self.name = fn, name

    def __call__(self, logits, batch, clean_logits=None):
        try:
            out = self.fn(logits, batch, clean_logits)
        except UserError:
            raise
        except Exception as exc:  # the user's code: report it in one line, not as our traceback
            raise UserError(f"metric '{self.name}' raised {type(exc).__name__}: {exc}") from exc
        n = logits.shape[0]
        if not isinstance(out, torch.Tensor):
            raise UserError(f"metric '{self.name}' returned {type(out).__name__}; it must return a tensor "
                            f"with one value per example (shape [{n}])")
        if tuple(out.shape) != (n,):
            raise UserError(f"metric '{self.name}' returned shape {list(out.shape)} for a batch of {n}; it must "
                            f"return one value per example (shape [{n}]), not a mean")
        if not (out.is_floating_point() or out.is_complex()):
            raise UserError(f"metric '{self.name}' returned {str(out.dtype).replace('torch.', '')} values; "
                            "return floating-point values")
        if logits.requires_grad and not out.requires_grad:
            raise UserError(f"metric '{self.name}' returned a tensor without gradient; compute it from the "
                            "logits with torch operations (no .item(), numpy or .detach())")
        return out


def user_metric(fn: Callable, name: str | None = None, higher_is_better: bool = True) -> Metric:
    """A Metric from the user's function fn(logits, batch, clean_logits=None) -> Tensor[batch]."""
    if not callable(fn):
        raise UserError(f"a metric must be a built-in name, a Metric or a function, got {type(fn).__name__}")
    name = name or getattr(fn, "__name__", None) or type(fn).__name__
    if name == "<lambda>":
        name = "lambda"
    return Metric(name, _Checked(fn, name), bool(higher_is_better), needs_clean_logits=True)


def resolve_metric(metric, higher_is_better: bool | None = None) -> Metric:
    """A built-in name, a `Metric`, or a function -> Metric. higher_is_better applies to a function
    (default True) or overrides a Metric's; a built-in's direction is fixed."""
    if isinstance(metric, Metric):
        return metric if higher_is_better is None else replace(metric, higher_is_better=bool(higher_is_better))
    if isinstance(metric, str):
        m = get_metric(metric)
        if higher_is_better is not None and bool(higher_is_better) != m.higher_is_better:
            raise UserError(f"metric '{metric}' is {'higher' if m.higher_is_better else 'lower'}-is-better; "
                            "the direction applies to your own metrics only")
        return m
    return user_metric(metric, higher_is_better=True if higher_is_better is None else higher_is_better)


def load_metric_file(spec: str):
    """'FILE.py:NAME' -> the object NAME defined in FILE.py (a function or a Metric)."""
    path, sep, name = spec.rpartition(":")
    if not sep or not path or not name:
        raise UserError(f"unknown metric '{spec}'; choose one of {', '.join(METRICS)}, or FILE.py:NAME for a "
                        "function of your own")
    if not os.path.isfile(path):
        raise UserError(f"metric file '{path}' not found")
    module_name = "circuitry_user_metric_" + os.path.splitext(os.path.basename(path))[0].replace("-", "_")
    try:
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        if module_spec is None or module_spec.loader is None:
            raise UserError(f"metric file '{path}' is not a Python file; give a .py file")
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"metric file '{path}' failed to import: {type(exc).__name__}: {exc}") from None
    if not hasattr(module, name):
        defined = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_")
                         and getattr(v, "__module__", None) == module_name)
        hint = f" (it defines {', '.join(defined)})" if defined else ""
        raise UserError(f"metric file '{path}' has no '{name}'{hint}")
    obj = getattr(module, name)
    if not callable(obj):
        raise UserError(f"'{name}' in metric file '{path}' is a {type(obj).__name__}, not a function "
                        "fn(logits, batch, clean_logits=None)")
    return obj


def parse_metric(text: str | None):
    """A CLI --metric value: a built-in name or FILE.py:NAME (None stays None)."""
    if text is None or text in METRICS:
        return text
    return load_metric_file(text)
