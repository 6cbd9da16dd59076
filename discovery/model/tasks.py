"""Task files: JSONL rows of clean/corrupted prompts with answer and wrong tokens.

A row is either a text row ({"clean", "corrupted", "answer", "wrong"}), tokenised with the model's
tokenizer, or a token row ({"clean_ids", "corrupted_ids", "answer_id", "wrong_id"}) for models
without one. Every problem becomes a one-line TaskError naming the row (1-based file line) and field.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from ..core.errors import TaskError, UserError

TEXT_FIELDS = ("clean", "corrupted", "answer", "wrong")
TOKEN_FIELDS = ("clean_ids", "corrupted_ids", "answer_id", "wrong_id")

# What each field must hold, for error messages.
_EXPECTED = {
    "clean": "a string",
    "corrupted": "a string",
    "answer": "a string or a list of strings",
    "wrong": "a string or a list of strings",
    "clean_ids": "a list of integers",
    "corrupted_ids": "a list of integers",
    "answer_id": "an integer or a list of integers",
    "wrong_id": "an integer or a list of integers",
}


class TextRow(BaseModel):
    # strict: a number is not silently turned into a prompt string, nor "3" into a token id
    model_config = ConfigDict(extra="ignore", strict=True)
    clean: str
    corrupted: str
    answer: str | list[str]
    wrong: str | list[str]


class TokenRow(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    clean_ids: list[int]
    corrupted_ids: list[int]
    answer_id: int | list[int]
    wrong_id: int | list[int]


@dataclass
class Task:
    name: str
    source: str
    content_hash: str
    kind: str  # "text" or "tokens"
    clean_ids: list[list[int]]
    corrupted_ids: list[list[int]]
    answer_ids: list[list[int]]
    wrong_ids: list[list[int]]
    metric: str | None = None  # the metric the task is meant for (built-in tasks); None: the caller's choice

    def __len__(self) -> int:
        return len(self.clean_ids)

    def subset(self, rows: list[int]) -> "Task":
        """The given 0-based rows, in the given order; name and hash stay those of the whole file."""
        rows = list(rows)
        for r in rows:
            if not isinstance(r, int) or isinstance(r, bool) or not 0 <= r < len(self):
                raise UserError(f"row index {r!r} is out of range for task '{self.name}' with {len(self)} rows "
                                f"(indices are 0-based, 0..{len(self) - 1})")
        pick = lambda xs: [list(xs[r]) for r in rows]  # noqa: E731 - copies so the subset is independent
        return replace(self, clean_ids=pick(self.clean_ids), corrupted_ids=pick(self.corrupted_ids),
                       answer_ids=pick(self.answer_ids), wrong_ids=pick(self.wrong_ids))


# --------------------------------------------------------------------------------------- loading


def load_task(path: str | os.PathLike, tokenizer=None, vocab_size: int | None = None,
              name: str | None = None, limit: int | None = None) -> Task:
    """A JSONL task file (`discovery.load_task`, in task_library/load.py, also takes a built-in task's name).
    `limit`: use only the file's first `limit` rows (its content hash is then of those lines only)."""
    p = Path(path)
    if not p.exists():
        raise TaskError(f"task file '{path}' not found")
    if not p.is_file():
        raise TaskError(f"task file '{path}' is not a file; give the path of a .jsonl file")
    data = p.read_bytes()
    numbered: list[tuple[int, Any]] = []
    end = 0  # bytes of the file the rows used come from
    # Split on bytes so a bad line can be reported by its own line number.
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        if limit is not None and len(numbered) >= limit:
            break
        end += len(raw) + 1
        if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):  # UTF-8 BOM from some editors
            raw = raw[3:]
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise TaskError(f"row {lineno}: not valid UTF-8 ({e.reason} at byte {e.start}); save the file as UTF-8") from None
        if not line.strip():
            continue
        try:
            numbered.append((lineno, json.loads(line)))
        except json.JSONDecodeError as e:
            raise TaskError(f"row {lineno}: not valid JSON ({e.msg} at column {e.colno}); "
                            f"each line must be one JSON object") from None
    if not numbered:
        raise TaskError(f"task file '{path}' has no rows; give one JSON object per line")
    used = data if limit is None else data[:end]
    return _build(numbered, tokenizer, vocab_size, name=name or p.stem, source=str(path),
                  content_hash=hashlib.sha256(used).hexdigest())


def task_from_rows(rows: list[dict], tokenizer=None, vocab_size: int | None = None,
                   name: str = "inline", source: str = "<inline>") -> Task:
    if not isinstance(rows, (list, tuple)):
        raise TaskError(f"task '{name}': rows must be a list of dicts, got {type(rows).__name__}")
    if not rows:
        raise TaskError(f"task '{name}' has no rows; give at least one row")
    try:
        canonical = json.dumps(list(rows), sort_keys=True)
    except (TypeError, ValueError) as e:
        raise TaskError(f"task '{name}': rows are not JSON-serialisable ({e}); use only JSON types") from None
    return _build(list(enumerate(rows, start=1)), tokenizer, vocab_size, name=name, source=source,
                  content_hash=hashlib.sha256(canonical.encode()).hexdigest())


def _short(value: Any, limit: int = 60) -> str:
    s = repr(value)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _row_kind(n: int, row: Any) -> str:
    if not isinstance(row, dict):
        raise TaskError(f"row {n}: must be a JSON object with fields {', '.join(TEXT_FIELDS)} "
                        f"(or {', '.join(TOKEN_FIELDS)}), got {type(row).__name__}")
    text = [k for k in TEXT_FIELDS if k in row]
    toks = [k for k in TOKEN_FIELDS if k in row]
    if text and toks:
        raise TaskError(f"row {n}: field '{toks[0]}' is a token field but the row also has text field "
                        f"'{text[0]}'; give either text fields or token fields, not both")
    if not text and not toks:
        raise TaskError(f"row {n}: field 'clean' is missing; a row needs {', '.join(TEXT_FIELDS)} "
                        f"(or {', '.join(TOKEN_FIELDS)})")
    return "tokens" if toks else "text"


def _validate(n: int, row: dict, model: type[BaseModel]) -> BaseModel:
    try:
        return model.model_validate(row)
    except ValidationError as e:
        err = e.errors()[0]
        field = str(err["loc"][0]) if err["loc"] else "?"
        if err["type"] == "missing":
            raise TaskError(f"row {n}: field '{field}' is missing; add it to the row") from None
        raise TaskError(f"row {n}: field '{field}' must be {_EXPECTED.get(field, 'valid')} "
                        f"(got {_short(row.get(field))})") from None


def _check_ids(n: int, field: str, ids: list[int], vocab_size: int | None) -> None:
    for i in ids:
        if i < 0:
            raise TaskError(f"row {n}: field '{field}': id {i} is negative; token ids must be >= 0")
        if vocab_size is not None and i >= vocab_size:
            raise TaskError(f"row {n}: field '{field}': id {i} is outside the model's vocabulary (size {vocab_size})")


def _as_list(n: int, field: str, value) -> list:
    out = value if isinstance(value, list) else [value]
    if not out:
        raise TaskError(f"row {n}: field '{field}' is an empty list; give at least one")
    return out


def _encode_prompt(n: int, field: str, text: str, tokenizer) -> list[int]:
    # Default special-token handling, as in normal use (e.g. Llama tokenizers prepend BOS).
    if not text.strip():
        raise TaskError(f"row {n}: field '{field}' is an empty prompt; give some text")
    ids = [int(i) for i in tokenizer(text)["input_ids"]]
    if not ids:
        raise TaskError(f"row {n}: field '{field}' is 0 tokens for this tokenizer; give a prompt that tokenises")
    return ids


def _encode_answer(n: int, field: str, text: str, tokenizer) -> int:
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        pieces = [tokenizer.decode([i]) for i in ids]
        raise TaskError(f"row {n}: field '{field}': {text!r} is {len(ids)} tokens for this tokenizer "
                        f"({pieces}); answers must be single tokens")
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is not None and int(ids[0]) == unk and text.strip() != (tokenizer.unk_token or "").strip():
        raise TaskError(f"row {n}: field '{field}': {text!r} is not in this tokenizer's vocabulary (it reads as the "
                        f"unknown token {tokenizer.unk_token!r}); use a word the model knows")
    return int(ids[0])


def _build(numbered: list[tuple[int, Any]], tokenizer, vocab_size: int | None, *, name: str,
           source: str, content_hash: str) -> Task:
    """Shared validation for files and inline rows; `numbered` pairs each row with its 1-based number."""
    kind = first_n = None
    clean, corrupted, answers, wrongs = [], [], [], []
    for n, row in numbered:
        k = _row_kind(n, row)
        if kind is None:
            kind, first_n = k, n
        elif k != kind:
            other = next(f for f in (TOKEN_FIELDS if k == "tokens" else TEXT_FIELDS) if f in row)
            raise TaskError(f"row {n}: field '{other}' makes this a {k} row, but row {first_n} is a {kind} row; "
                            f"rows of both kinds may not be mixed in one file")
        if k == "text":
            if tokenizer is None:
                raise TaskError(f"row {n}: text rows need a tokenizer, but this model has none; "
                                f"give token rows ({', '.join(TOKEN_FIELDS)})")
            r = _validate(n, row, TextRow)
            c = _encode_prompt(n, "clean", r.clean, tokenizer)
            k_ = _encode_prompt(n, "corrupted", r.corrupted, tokenizer)
            a = [_encode_answer(n, "answer", s, tokenizer) for s in _as_list(n, "answer", r.answer)]
            w = [_encode_answer(n, "wrong", s, tokenizer) for s in _as_list(n, "wrong", r.wrong)]
            fields = ("clean", "corrupted", "answer", "wrong")
        else:
            r = _validate(n, row, TokenRow)
            c, k_ = list(r.clean_ids), list(r.corrupted_ids)
            for field, ids in (("clean_ids", c), ("corrupted_ids", k_)):
                if not ids:
                    raise TaskError(f"row {n}: field '{field}' is empty (0 tokens); give at least one token id")
            a = _as_list(n, "answer_id", r.answer_id)
            w = _as_list(n, "wrong_id", r.wrong_id)
            fields = TOKEN_FIELDS
        # Range-check tokenised text too: a tokenizer larger than the model's embedding would crash later.
        for field, ids in zip(fields, (c, k_, a, w)):
            _check_ids(n, field, ids, vocab_size)
        clean.append(c)
        corrupted.append(k_)
        answers.append(a)
        wrongs.append(w)
    return Task(name=name, source=source, content_hash=content_hash, kind=kind, clean_ids=clean,
                corrupted_ids=corrupted, answer_ids=answers, wrong_ids=wrongs)


def check_equal_lengths(task: Task) -> None:
    """Patching corrupted activations into the clean run aligns positions, so lengths must match per row."""
    for i, (c, k) in enumerate(zip(task.clean_ids, task.corrupted_ids)):
        if len(c) != len(k):
            raise TaskError(f"row {i + 1}: clean has {len(c)} tokens but corrupted has {len(k)}; patching with "
                            f"corrupted activations needs equal lengths per row (pad the prompts or use "
                            f"--intervention zero/mean)")


# --------------------------------------------------------------------------------------- batching


@dataclass
class Batch:
    rows: list[int]
    clean: torch.LongTensor
    corrupted: torch.LongTensor
    clean_last: torch.LongTensor
    corrupted_last: torch.LongTensor
    answers: torch.LongTensor
    answer_mask: torch.BoolTensor
    wrongs: torch.LongTensor
    wrong_mask: torch.BoolTensor

    def to(self, device) -> "Batch":
        return Batch(self.rows, *(getattr(self, f).to(device) for f in (
            "clean", "corrupted", "clean_last", "corrupted_last", "answers", "answer_mask", "wrongs", "wrong_mask")))


def _pad(seqs: list[list[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to [B, max_len]; also return the mask of real entries."""
    width = max(len(s) for s in seqs)
    out = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.bool)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = True
    return out.to(device), mask.to(device)


def divergence_order(task: Task) -> list[int]:
    """Row indices ordered by the first position at which the clean and corrupted prompts differ
    (stable), so that a batch's rows agree for as long as possible: positions before a batch's first
    difference are the same in the clean and the corrupted run, and cached evaluations skip them
    (patching.RunCache's p0)."""
    def first_difference(r: int) -> int:
        c, k = task.clean_ids[r], task.corrupted_ids[r]
        return next((i for i, (a, b) in enumerate(zip(c, k)) if a != b), min(len(c), len(k)))

    return sorted(range(len(task)), key=first_difference)


def iter_batches(task: Task, batch_size: int, device=None, pad_id: int = 0,
                 order: list[int] | None = None) -> Iterator[Batch]:
    """Batches of the rows in `order` (default: row order; each batch's `rows` says which); right
    padding keeps positions aligned with an unpadded run (causal attention)."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise UserError(f"batch size must be a positive integer, got {batch_size!r}")
    order = list(range(len(task))) if order is None else order
    for start in range(0, len(task), batch_size):
        rows = order[start:start + batch_size]
        sel = lambda xs: [xs[r] for r in rows]  # noqa: E731
        clean, _ = _pad(sel(task.clean_ids), pad_id, device)
        corrupted, _ = _pad(sel(task.corrupted_ids), pad_id, device)
        answers, answer_mask = _pad(sel(task.answer_ids), 0, device)
        wrongs, wrong_mask = _pad(sel(task.wrong_ids), 0, device)
        last = lambda xs: torch.tensor([len(xs[r]) - 1 for r in rows], dtype=torch.long, device=device)  # noqa: E731
        yield Batch(rows, clean, corrupted, last(task.clean_ids), last(task.corrupted_ids),
                    answers, answer_mask, wrongs, wrong_mask)
