"""The labeled circuit file (the circuit's own schema_version, 1.1 and later): the circuit JSON plus one label record per labeled
component, the in-circuit edges with their endpoints' labels, and how the labels were made.

Discovery never imports this module (its CLI reads labeled files for diff and timeline through
labeling.cli's plug hook, discovery/cli/commands.py HOOKS); `LabeledCircuit` extends `discovery.core.circuit.Circuit` with optional
fields only (a minor version), so every 1.x reader still reads a labeled file and `LabeledCircuit.load`
reads plain 1.0 circuits (with no labels)."""

from __future__ import annotations

import os
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from discovery.core.circuit import SCHEMA_VERSION, Circuit

# plain and labeled files share one version line (discovery/core/circuit.py); labels are optional fields
LABELED_SCHEMA_VERSION = SCHEMA_VERSION

# The fixed role vocabulary. "name_mover" is the "copy/name_mover": a head that copies the
# tokens it attends to into the output.
# The IOI roles (Wang et al. 2022) are tested as labeling/ioi.py defines them.
ROLE_TAGS = ("previous_token", "induction", "duplicate_token", "name_mover", "negative_name_mover",
             "backup_name_mover", "copy_suppression", "s_inhibition", "attention_sink", "positional", "other")
RoleTag = Literal["previous_token", "induction", "duplicate_token", "name_mover", "negative_name_mover",
                  "backup_name_mover", "copy_suppression", "s_inhibition", "attention_sink", "positional", "other"]
# What a model may plausibly write for a tag; mapped onto the vocabulary before validation.
TAG_ALIASES = {"copy": "name_mover", "copy/name_mover": "name_mover", "copying": "name_mover",
               "name mover": "name_mover", "prev_token": "previous_token", "previous token": "previous_token",
               "sink": "attention_sink", "duplicate": "duplicate_token", "self": "positional",
               "negative name mover": "negative_name_mover", "backup name mover": "backup_name_mover",
               "s-inhibition": "s_inhibition"}
# ok: every role test and every held-out score passed (labeling/verify.py); unverified: one did not
# (status_reason says which); heuristic_only: written by files before labeler v2 (no role found).
Status = Literal["ok", "unverified", "heuristic_only", "llm_failed", "unparsed", "skipped"]
MAX_LABEL_WORDS = 8
MAX_LABEL_CHARS = 60  # an LLM label longer than this is cut at a word boundary (labeling/llm_labeler.py)


def normalise_tags(tags) -> list[str]:
    out = []
    for t in tags or []:
        key = str(t).strip().lower()
        key = TAG_ALIASES.get(key, key.replace("-", "_").replace(" ", "_"))
        if key not in out:
            out.append(key)
    return out


class DataRef(BaseModel):
    """The data an evidence item or a score was computed on, enough to regenerate it."""

    source: str  # "repeated_random_tokens" or the task's source (e.g. "builtin:induction?n=200&seed=0")
    split: str = "all"  # "all", "evidence" (even task rows) or "held_out" (odd task rows)
    rows: int = 0
    seed: int | None = None  # the generator seed (repeated tokens, token samples, decoys)
    segment: int | None = None  # length of S in the repeated sequences <bos> S S
    content_hash: str | None = None  # the task's content hash


class TokenValue(BaseModel):
    token: str
    token_id: int
    value: float


class AttentionPair(BaseModel):
    """One query position's strongest key: (query token, key token) with its attention weight."""

    query_token: str
    key_token: str
    query_pos: int
    key_pos: int
    weight: float
    row: int  # the task row (0-based, in the whole task)


class Context(BaseModel):
    """A position in a task prompt: the tokens up to and including it, and the MLP's activity there."""

    tokens: list[str]  # the last few tokens, ending at the position
    token: str
    row: int
    pos: int
    activation: float


class Importance(BaseModel):
    """The component's edges in the discovered circuit (scores from the discovery method)."""

    in_circuit_in: int = 0
    in_circuit_out: int = 0
    in_abs_score: float = 0.0  # sum of |score| over in-circuit incoming edges
    out_abs_score: float = 0.0
    top_in: list[str] = Field(default_factory=list)  # in-circuit incoming edge names, by |score|
    top_out: list[str] = Field(default_factory=list)


class PatternScores(BaseModel):
    """Mean attention on one dataset: to the previous token, an earlier copy of the current token
    (duplicate), the token after that copy (induction), the first position (sink) and itself (self)."""

    data: DataRef
    previous_token: float | None = None
    duplicate_token: float | None = None
    induction: float | None = None
    sink: float | None = None
    self_attention: float | None = None
    n_queries: dict[str, int] = Field(default_factory=dict)  # query positions each score averages over


class OVCopying(BaseModel):
    """Does the head's OV circuit map a token to itself: over sampled tokens t, the share whose own
    logit is among the top k (copying) or bottom k (suppression) of OV(embed(t)) through the unembedding
    (ties count against: a map that writes nothing copies nothing)."""

    data: DataRef
    copying: float
    suppression: float
    k: int
    n_tokens: int
    chance: float  # k / n_tokens: what a random map gives
    silent: bool = False  # the OV map writes nothing (zero output projection): no copying either way


class DirectLogits(BaseModel):
    """The component's direct write at each task prompt's last position, read through the unembedding:
    logits(residual) - logits(residual - write), centred over the vocabulary, averaged over rows."""

    data: DataRef
    promoted: list[TokenValue] = Field(default_factory=list)
    suppressed: list[TokenValue] = Field(default_factory=list)
    answer_minus_wrong: float | None = None  # its direct effect on logit(answer) - logit(wrong)


class AnswerAttention(BaseModel):
    """Where the head looks from the prediction position (each task row's last token): its mean
    attention on earlier positions holding the answer token(s), and on those holding the wrong one(s)
    (in IOI: the indirect object, and the subject)."""

    data: DataRef
    to_answer: float
    to_wrong: float
    rows: int  # task rows whose prompt contains the answer or the wrong token at all


class IOIEvidence(BaseModel):
    """The IOI measurements of a head (labeling/ioi.py has the exact definitions). Positions: END is
    each evidence prompt's last token, IO the earlier positions holding the answer, S those holding the
    wrong token (the subject), S2 the last of them. Attention shares are averaged over the rows that
    hold a name; `*_corrupted` is the same head's attention on the corrupted prompt at the positions
    that held the name in the clean one (content control); `offset` is the fixed distance back from END
    that gets the most attention, `offset_attention` that attention (positional control)."""

    data: DataRef
    rows: int
    to_io: float
    to_s: float
    to_s2: float
    to_io_corrupted: float | None = None
    to_s_corrupted: float | None = None
    to_s2_corrupted: float | None = None
    offset: int = 0
    offset_attention: float = 0.0
    name_copy: float  # share of name positions whose own token is in the top 5 of the vocabulary under the OV map
    name_suppression: float  # ... in the bottom 5
    n_name_positions: int = 0
    direct: float  # direct effect of its write at END on logit(IO) - logit(S)
    max_direct: float  # the largest |direct| over every head of the model
    name_movers: list[str] = Field(default_factory=list)  # the model's heads that pass the name-mover test
    name_movers_direct: float | None = None  # their summed direct effect
    s_inhibition_effect: float | None = None  # path patching into the name movers' queries: share of the behaviour lost
    knockout_direct: float | None = None  # its direct effect with the name movers mean-ablated
    knockout_to_io: float | None = None  # its END -> IO attention with the name movers mean-ablated
    behaviour: float | None = None  # mean logit(IO) - logit(S) of the model on these rows
    notes: list[str] = Field(default_factory=list)  # what could not be measured, and why


class HeadEvidence(BaseModel):
    kind: Literal["head"] = "head"
    patterns: list[PatternScores] = Field(default_factory=list)  # repeated random tokens, then task prompts
    ov: OVCopying | None = None
    top_pairs: list[AttentionPair] = Field(default_factory=list)
    top_pairs_data: DataRef | None = None
    answer_attention: AnswerAttention | None = None
    logits: DirectLogits | None = None
    importance: Importance = Field(default_factory=Importance)
    ioi: IOIEvidence | None = None  # on tasks whose prompts hold the answer and wrong tokens (IOI-like)


class MLPEvidence(BaseModel):
    kind: Literal["mlp"] = "mlp"
    data: DataRef | None = None
    silent: bool = False  # its output is zero (to fp32 precision) on every evidence position
    max_activation: float = 0.0  # largest output norm seen
    top_contexts: list[Context] = Field(default_factory=list)
    top_tokens: list[str] = Field(default_factory=list)  # current tokens of the top-activating contexts
    logits: DirectLogits | None = None  # logit lens of its output at its top-activating positions
    importance: Importance = Field(default_factory=Importance)


class ScoreResult(BaseModel):
    """An explanation scored on held-out data, with the same scorer given a random label beside it."""

    scorer: str  # "evidence_agreement", "detection", "llm:<model>" or "llm-detection:<model>"
    metric: Literal["roc_auc", "balanced_accuracy"]
    value: float | None = None
    ci_low: float | None = None  # 95% stratified bootstrap interval of value (labeling/stats.py)
    ci_high: float | None = None
    random_baseline: float | None = None
    n_positive: int = 0
    n_negative: int = 0
    data: DataRef | None = None
    note: str | None = None


class Usage(BaseModel):
    calls: int = 0  # requests sent now (cache misses, retries included)
    cached: int = 0  # answers read from the cache
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, other: "Usage") -> None:
        for f in type(self).model_fields:
            setattr(self, f, getattr(self, f) + getattr(other, f))


class Provenance(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    backend: Literal["heuristic", "openai"]
    labeler_version: str
    template_version: str | None = None
    llm_model: str | None = None
    llm_base_url: str | None = None
    cache_keys: list[str] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)
    error: str | None = None  # why an LLM label was not used (llm_failed / unparsed)
    heuristic_label: str | None = None  # what the heuristic said, when an LLM label replaced it


class LabelRecord(BaseModel):
    component: str
    kind: Literal["head", "mlp"]
    label: str
    description: str
    role_tags: list[RoleTag]
    confidence: float = Field(ge=0.0, le=1.0)
    status: Status
    status_reason: str | None = None  # why it is not ok: failed role tests, scores not above their baselines
    evidence: HeadEvidence | MLPEvidence | None = None
    scores: dict[str, ScoreResult] = Field(default_factory=dict)
    provenance: Provenance

    @field_validator("label")
    @classmethod
    def _short_label(cls, v: str) -> str:
        if len(v.split()) > MAX_LABEL_WORDS:
            raise ValueError(f"label has more than {MAX_LABEL_WORDS} words")
        return v


class EdgeLabel(BaseModel):
    name: str
    source: str
    target: str
    slot: Literal["q", "k", "v", "mlp", "logits"]
    score: float | None
    source_label: str | None
    target_label: str | None


class LabelingInfo(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    backend: Literal["heuristic", "openai"]
    scorer: Literal["evidence_agreement", "llm"]
    labeler_version: str
    evidence: dict[str, Any] = Field(default_factory=dict)  # seeds, sizes, splits
    thresholds: dict[str, float] = Field(default_factory=dict)
    llm_model: str | None = None
    llm_base_url: str | None = None
    template_version: str | None = None
    usage: Usage = Field(default_factory=Usage)
    wall_time_s: float | None = None


class LLMLabelAnswer(BaseModel):
    """What the LLM labeler must answer (validated before it is used)."""

    model_config = ConfigDict(extra="forbid")

    label: str
    description: str
    role_tags: list[RoleTag] = Field(min_length=1)
    confidence: float = Field(ge=0.0, le=1.0)

    @field_validator("role_tags", mode="before")
    @classmethod
    def _tags(cls, v):
        return normalise_tags(v) if isinstance(v, list) else v

    @field_validator("label")
    @classmethod
    def _label(cls, v: str) -> str:
        v = " ".join(v.split())
        if not v or len(v.split()) > MAX_LABEL_WORDS:
            raise ValueError(f"label must be 1 to {MAX_LABEL_WORDS} words")
        if len(v) > MAX_LABEL_CHARS:  # long words: cut at the last word boundary that fits
            cut = v[:MAX_LABEL_CHARS - 1]
            v = (cut.rsplit(" ", 1)[0] if " " in cut else cut) + "\u2026"
        return v

    @field_validator("description")
    @classmethod
    def _description(cls, v: str) -> str:
        v = v.strip()
        sentences = [s for s in re.split(r"(?<=[.!?])\s+", v) if s]
        if not v or len(sentences) > 3 or len(v) > 800:
            raise ValueError("description must be 1 to 3 sentences (at most 800 characters)")
        return v


class LabeledCircuit(Circuit):
    schema_version: str = LABELED_SCHEMA_VERSION
    labels: list[LabelRecord] = Field(default_factory=list)
    edge_labels: list[EdgeLabel] = Field(default_factory=list)
    labeling: LabelingInfo | None = None

    def label_of(self, component: str) -> LabelRecord | None:
        return next((r for r in self.labels if r.component == component), None)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LabeledCircuit":
        """Reads labeled (1.1) and plain (1.0) circuit files; a plain one comes back with no labels."""
        return super().load(path)  # same-major check and one-line errors are Circuit.load's
