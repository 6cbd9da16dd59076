"""Checks of a job request made at submission, before it is queued (the API and watches): the model
is one this server may load (and its revision exists), the task's rows have the right shape and
size and fit the model's vocabulary and context."""

from __future__ import annotations

import functools

from discovery.core.errors import UserError
from discovery.model.config import context_length

from ..config import Settings
from ..problems import Unprocessable
from .spec import JobRequest, TaskSpec


class _StubTokenizer:
    """Stands in for a model's tokenizer when checking text rows before a job is queued: every
    structural check runs; tokenization itself (single-token answers) is checked when the job runs."""

    def __call__(self, text):
        return {"input_ids": [0]}

    def encode(self, text, add_special_tokens=False):
        return [0]


def validate_task(task: TaskSpec, settings: Settings) -> None:
    from discovery.model.tasks import check_equal_lengths, task_from_rows

    if task.builtin is not None:
        if task.n > settings.max_rows:
            raise Unprocessable(f"task.n is {task.n}; this server allows at most {settings.max_rows} rows per job")
        return
    rows = task.rows or []
    if len(rows) > settings.max_rows:
        raise Unprocessable(f"task.rows has {len(rows)} rows; this server allows at most {settings.max_rows}")
    try:
        built = task_from_rows(rows, tokenizer=_StubTokenizer(), name=task.name)
        if built.kind == "tokens":
            longest = max(len(r) for r in built.clean_ids + built.corrupted_ids)
            if longest > settings.max_tokens_per_row:
                raise Unprocessable(f"a task row has {longest} tokens; this server allows at most "
                                    f"{settings.max_tokens_per_row}")
            check_equal_lengths(built)
    except UserError as exc:
        raise Unprocessable(f"task.rows: {exc}") from None


def _model_config(path: str) -> dict:
    """The model directory's config.json (an empty dict if it cannot be read: the job then says why);
    parsed once per version of the file (submissions are the service's hottest path)."""
    import os

    try:
        stamp = os.stat(os.path.join(path, "config.json")).st_mtime_ns
    except OSError:
        return {}
    return _read_config(path, stamp)


@functools.lru_cache(maxsize=256)
def _read_config(path: str, stamp: int) -> dict:
    import json
    import os

    try:
        with open(os.path.join(path, "config.json")) as fh:
            data = json.load(fh)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


@functools.lru_cache(maxsize=256)
def _toy_dir(name: str, revision: str | None) -> str:
    """A shipped toy model's directory (shipped files: they do not change while the server runs)."""
    from discovery.core.names import toy_model_dir

    return toy_model_dir(name, revision)


def validate_model(job: JobRequest, settings: Settings) -> None:
    """The model is one this server may load, its revision exists (toy models), and token rows fit
    its vocabulary and context (read from a local model's config.json; a hub model is checked when
    it loads). A refusal names the field."""
    import os

    from .models_access import resolve_model

    m = job.model
    try:
        path = resolve_model(m.name, settings.model_roots) if not m.name.startswith("toy:") else m.name
    except UserError as exc:
        raise Unprocessable(f"model.name: {exc}") from None
    if m.name.startswith("toy:"):
        try:
            path = _toy_dir(m.name, m.revision)
        except UserError as exc:
            raise Unprocessable(f"model.revision: {exc}" if m.revision else f"model.name: {exc}") from None
    elif os.path.isdir(path):
        if m.revision is not None:
            raise Unprocessable(f"model.revision: '{m.name}' is a model directory, which has no revisions; drop "
                                "revision (a directory of checkpoints is watched with POST /v1/watches)")
    else:
        return  # a hub model: its revision, vocabulary and context are known once it loads
    config = _model_config(path)
    vocab, context = config.get("vocab_size"), context_length(config)
    rows = job.task.rows or []
    for i, row in enumerate(rows):
        if "clean_ids" not in row:
            break  # text rows: their token counts are known once the job has the tokenizer
        for field in ("clean_ids", "corrupted_ids"):
            ids = row.get(field) or []
            if context and len(ids) > context:
                raise Unprocessable(f"task.rows[{i}].{field}: {len(ids)} tokens, longer than the model's context "
                                    f"of {context} tokens")
        if isinstance(vocab, int):
            for field in ("clean_ids", "corrupted_ids", "answer_id", "wrong_id"):
                values = row.get(field)
                for v in values if isinstance(values, list) else [values]:
                    if isinstance(v, int) and not 0 <= v < vocab:
                        raise Unprocessable(f"task.rows[{i}].{field}: token id {v} is outside the model's "
                                            f"vocabulary (0..{vocab - 1})")
