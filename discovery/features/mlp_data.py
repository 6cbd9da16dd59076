"""What transcoders are trained on: token sequences from a file or a built-in task, and each MLP's input
(after its norm) and output, read by forward hooks on the Hugging Face model's own MLP modules.

Sequences (`load_sequences`):
- `FILE.txt`: one text per non-empty line;
- `FILE.jsonl`: rows with "text" (a string), or "input_ids" / "ids" (token ids), or task rows (clean /
  corrupted prompts as for `circuitry discover`: both prompts of every row are used);
- `TASK`: a built-in task name (`circuitry tasks`): `n` rows from `seed`, both prompts of each row.
Texts are tokenised with the model's tokenizer (its own special-token handling, BOS where it adds one)
and cut to `max_len` tokens; duplicates are dropped, the order is kept.

Activations (`mlp_activations`): for every layer l, X_l = the argument of `blocks[l].mlp` (GPT-2's ln_2,
NeoX's post_attention_layernorm — also with parallel attention/MLP —, Llama/Qwen2/Mistral's
post_attention_layernorm output) and Y_l = what that module returns, at the real (non-padding) positions
except position 0, whose activations are outliers (the attention sink) and whose features circuit-tracer's
attribution zeroes.
"""

from __future__ import annotations

import hashlib
import json
import os

import torch

from ..core.errors import UserError


def _tokenize(texts: list[str], tokenizer, source: str, max_len: int) -> list[list[int]]:
    if tokenizer is None:
        raise UserError(f"'{source}' holds text but the model has no tokenizer; give token ids (rows with input_ids)")
    return [[int(i) for i in tokenizer(t)["input_ids"]][:max_len] for t in texts]


def _check_ids(seqs: list[list[int]], vocab_size: int, source: str) -> None:
    for n, seq in enumerate(seqs, start=1):
        bad = [i for i in seq if not 0 <= i < vocab_size]
        if bad:
            raise UserError(f"'{source}' sequence {n}: token id {bad[0]} is outside the model's vocabulary (0..{vocab_size - 1})")


def _jsonl(path: str, loaded, max_len: int) -> list[list[int]]:
    rows = []
    with open(path, encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise UserError(f"'{path}' row {lineno}: not valid JSON ({exc.msg}); one JSON object per line") from None
    if not rows:
        raise UserError(f"'{path}' has no rows")
    first = rows[0] if isinstance(rows[0], dict) else {}
    if "text" in first:
        texts = []
        for n, row in enumerate(rows, start=1):
            if not isinstance(row, dict) or not isinstance(row.get("text"), str) or not row["text"].strip():
                raise UserError(f"'{path}' row {n}: 'text' must be a non-empty string")
            texts.append(row["text"])
        return _tokenize(texts, loaded.tokenizer, path, max_len)
    key = "input_ids" if "input_ids" in first else "ids" if "ids" in first else None
    if key:
        seqs = []
        for n, row in enumerate(rows, start=1):
            ids = row.get(key) if isinstance(row, dict) else None
            if not isinstance(ids, list) or not ids or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
                raise UserError(f"'{path}' row {n}: '{key}' must be a non-empty list of token ids")
            seqs.append(ids[:max_len])
        return seqs
    from ..model.tasks import load_task  # task rows: clean / corrupted prompts

    task = load_task(path, tokenizer=loaded.tokenizer, vocab_size=loaded.vocab_size)
    return [s[:max_len] for pair in zip(task.clean_ids, task.corrupted_ids) for s in pair]


def load_sequences(data: str, loaded, *, n: int | None = None, seed: int = 0, max_len: int = 128) -> list[list[int]]:
    """Token sequences for training (see the module docstring)."""
    from ..core.names import TASK_NAMES

    data = os.fspath(data)
    if os.path.isfile(data):
        if data.endswith(".txt"):
            with open(data, encoding="utf-8-sig", errors="strict") as f:
                texts = [line.strip() for line in f if line.strip()]
            if not texts:
                raise UserError(f"'{data}' has no non-empty lines")
            seqs = _tokenize(texts, loaded.tokenizer, data, max_len)
        elif data.endswith(".jsonl"):
            seqs = _jsonl(data, loaded, max_len)
        else:
            raise UserError(f"--data '{data}': give a .txt file (one text per line), a .jsonl file or a built-in task name")
    elif data in TASK_NAMES:
        from ..task_library import build_task

        task = build_task(data, tokenizer=loaded.tokenizer, vocab_size=loaded.vocab_size, n=n or 1000, seed=seed)
        seqs = [s[:max_len] for pair in zip(task.clean_ids, task.corrupted_ids) for s in pair]
    else:
        raise UserError(f"--data '{data}' is neither a file nor a built-in task ({', '.join(TASK_NAMES)})")
    seqs = [s for s in seqs if len(s) >= 2]  # position 0 is left out: a sequence needs a second token
    unique = list(dict.fromkeys(tuple(s) for s in seqs))
    if len(unique) < 2:
        raise UserError(f"--data '{data}' gives {len(unique)} distinct sequences of 2 or more tokens; give more text")
    _check_ids([list(s) for s in unique], loaded.vocab_size, data)
    return [list(s) for s in unique]


def fingerprint(seqs: list[list[int]]) -> str:
    """A hash of the training sequences (a resumed run must see the same data)."""
    return hashlib.sha256(json.dumps(seqs).encode()).hexdigest()[:16]


def pad_batch(seqs: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids [B, T] and the mask [B, T] of real tokens (bool)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.bool)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s)] = True
    return ids.to(device), mask.to(device)


class MLPTap:
    """Forward hooks on every layer's MLP module that keep its input and output (or replace its output
    with `replace(layer, x)` when given). Use as a context manager."""

    def __init__(self, loaded, replace=None):
        self.blocks = loaded.adapter.blocks()
        self.replace = replace
        self.inputs: list[torch.Tensor | None] = [None] * len(self.blocks)
        self.outputs: list[torch.Tensor | None] = [None] * len(self.blocks)
        self._handles = []

    def _hook(self, layer):
        def hook(module, args, kwargs, output):
            x = args[0] if args else next(iter(kwargs.values()))
            self.inputs[layer] = x.detach()
            if self.replace is not None:
                return self.replace(layer, x).to(output.dtype)
            self.outputs[layer] = output.detach()
            return None
        return hook

    def __enter__(self):
        for layer, block in enumerate(self.blocks):
            self._handles.append(block.mlp.register_forward_hook(self._hook(layer), with_kwargs=True))
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()


def pad_id_of(loaded) -> int:
    tok = loaded.tokenizer
    pad = getattr(tok, "pad_token_id", None) if tok is not None else None
    if pad is None:
        pad = getattr(loaded.config, "pad_token_id", None)
    return int(pad) if pad is not None else 0


@torch.no_grad()
def mlp_activations(loaded, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """X, Y: [n_layers, tokens, d_model] fp32 MLP inputs (after the norm) and outputs at the real
    positions after position 0 of `seqs` (one forward pass)."""
    ids, mask = pad_batch(seqs, pad_id_of(loaded), loaded.adapter.device)
    keep = mask.clone()
    keep[:, 0] = False
    with MLPTap(loaded) as tap:
        loaded.hf_model(input_ids=ids, attention_mask=mask.long())
    X = torch.stack([x[keep].float() for x in tap.inputs])
    Y = torch.stack([y[keep].float() for y in tap.outputs])
    return X, Y
