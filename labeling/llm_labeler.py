"""The LLM labeler: the evidence block in a prompt, the answer parsed into the label schema.

A malformed answer gets one repair retry (the answer and the validation error sent back); when that
fails too the record keeps the heuristic label with status `unparsed`. A request that fails (retries
exhausted, a final 4xx) or a refusal keeps the heuristic label with status `llm_failed`. Either way the
record says why in `provenance.error`."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Callable

from pydantic import ValidationError

from . import prompts
from .llm import LLMClient, LLMError
from .schema import LabelRecord, LLMLabelAnswer, Provenance, Usage

LABELER_VERSION = "openai-v1"


@dataclass
class Asked:
    value: object | None = None
    status: str = "ok"  # ok | llm_failed | unparsed
    error: str | None = None
    usage: Usage = field(default_factory=Usage)
    keys: list[str] = field(default_factory=list)


def _strip_fences(text: str) -> str:
    """Some local servers wrap JSON in a Markdown code fence despite the schema."""
    m = re.fullmatch(r"\s*```(?:json)?\s*(.*?)\s*```\s*", text, flags=re.S)
    return m.group(1) if m else text


def _parse(content: str | None, parse: Callable[[dict], object]) -> tuple[object | None, str | None]:
    if not content or not content.strip():
        return None, "empty answer"
    try:
        data = json.loads(_strip_fences(content))
    except json.JSONDecodeError as exc:
        return None, f"not JSON: {exc.msg} at position {exc.pos}"
    if not isinstance(data, dict):
        return None, "not a JSON object"
    try:
        return parse(data), None
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(x) for x in err["loc"])
        return None, f"field '{where}': {err['msg']}" if where else err["msg"]
    except KeyError as exc:
        return None, f"the answer has no field {exc}"
    except (ValueError, TypeError) as exc:
        return None, str(exc)


def explain(asked: "Asked") -> str | None:
    """Why a request gave no usable answer, as a clause a person reads (None when it did)."""
    if asked.value is not None or asked.error is None:
        return None
    if asked.status == "llm_failed" and not asked.error.startswith("the model refused"):
        return f"the LLM request failed: {asked.error}"
    if asked.status == "llm_failed":
        return asked.error
    return f"the LLM's answer could not be read, even after one repair request ({asked.error})"


def ask_json(client: LLMClient, messages: list[dict], fmt: dict, version: str,
             parse: Callable[[dict], object]) -> Asked:
    """One structured request, with one repair retry on an unusable answer."""
    out = Asked()
    for round_ in range(2):
        try:
            res = client.chat(messages, fmt, version if round_ == 0 else f"{version}+{prompts.REPAIR_NOTE}")
        except LLMError as exc:
            out.usage.add(exc.usage)
            out.status, out.error = ("llm_failed" if round_ == 0 else "unparsed"), str(exc)
            return out
        out.usage.add(res.usage)
        out.keys.append(res.cache_key)
        if res.refusal:
            out.status, out.error = "llm_failed", f"the model refused: {prompts.q(res.refusal, 200)}"
            return out
        value, err = _parse(res.content, parse)
        if value is not None:
            out.value, out.status, out.error = value, "ok", None
            return out
        out.status, out.error = "unparsed", err
        messages = prompts.repair_messages(messages, res.content, err)
    return out


def llm_label(client: LLMClient, heuristic: LabelRecord, model_name: str, task_name: str) -> LabelRecord:
    """The LLM's label for a component, or the heuristic label with the reason it was kept."""
    messages = prompts.label_messages(heuristic.component, heuristic.evidence, model_name, task_name)
    asked = ask_json(client, messages, prompts.LABEL_FORMAT, prompts.TEMPLATE_VERSION, LLMLabelAnswer.model_validate)
    prov = Provenance(backend="openai", labeler_version=LABELER_VERSION, template_version=prompts.TEMPLATE_VERSION,
                      llm_model=client.config.model, llm_base_url=client.config.base_url, cache_keys=asked.keys,
                      usage=asked.usage, error=asked.error, heuristic_label=heuristic.label)
    if asked.value is None:
        return heuristic.model_copy(update={"status": asked.status, "provenance": prov})
    ans: LLMLabelAnswer = asked.value
    return heuristic.model_copy(update={"label": ans.label, "description": ans.description, "role_tags": ans.role_tags,
                                        "confidence": ans.confidence, "status": "ok", "provenance": prov})
