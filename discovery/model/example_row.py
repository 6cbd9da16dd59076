"""The representative row a circuit file carries (`task.example`): the task's first clean prompt, token
by token, with the model's probability of the answer (and the wrong token) at the last position, where
the metric is read. Viewers that show one prompt (Neuronpedia, circuit-tracer) display it."""

from __future__ import annotations

import torch

from ..core.circuit import ExampleRow
from .adapters import LoadedModel
from .tasks import Task


def _decode(tokenizer, ids: list[int]) -> str:
    if tokenizer is None:
        return "".join(f"<{i}>" for i in ids)
    return tokenizer.decode(ids)


def representative_row(model: LoadedModel, task: Task, row: int = 0) -> ExampleRow:
    ids = list(task.clean_ids[row])
    answer, wrong = task.answer_ids[row][0], (task.wrong_ids[row] or [None])[0]
    device = next(model.hf_model.parameters()).device
    with torch.no_grad():
        logits = model.hf_model(torch.tensor([ids], device=device)).logits[0, -1].float()
    probs = torch.softmax(logits, dim=-1)
    tok = model.tokenizer
    return ExampleRow(row=row, token_ids=ids, tokens=[_decode(tok, [i]) for i in ids], prompt=_decode(tok, ids),
                      answer_id=answer, answer=_decode(tok, [answer]), answer_prob=float(probs[answer]),
                      wrong_id=wrong, wrong=None if wrong is None else _decode(tok, [wrong]),
                      wrong_prob=None if wrong is None else float(probs[wrong]))
