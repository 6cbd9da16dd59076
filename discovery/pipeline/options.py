"""The discovery options: one pydantic model, one set of bounds and defaults, shared by discover(),
the CLI (`circuitry discover`), the service's job request, watches and the job pipeline.

DiscoveryOptions has three groups, as the API's job body has them:
- `method`: the method `name` and how it runs (metric, intervention, steps, batch_size, curve, ACDC's
  tau list and candidates);
- `selection`: how a scoring method's edges become the circuit (top_n / threshold / greedy, absolute,
  prune); ACDC methods decide the circuit themselves by tau;
- `labeling`: a labeling backend ('none': no labels) and its options.

discover() and the CLI take the same options flat (FLAT maps each flat name to its group and field:
`method` is method.name, `label_backend` is labeling.backend, every other field keeps its name), so
an option added to a group is a discover() keyword and a CLI flag (`--top-n` for top_n) at once.
A rejected value is a UserError naming the option as the caller spelled it (flat_error)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, ValidationInfo,
                      field_validator, model_validator)

from ..core.errors import UserError
from ..core import registry
from ..core.names import (ACDC_METHODS, ALL_METHODS, AUTO_METHOD, INTERVENTIONS, LEARNED_METHODS,  # light: no torch
                          LEVELS, METHOD_NAMES, METRIC_NAMES)

NODE_METHODS = registry.names(level="node")  # level "node" (methods/node.py)
NEURON_METHODS = registry.names(level="neuron")  # level "neuron"
DEFAULT_METHOD = registry.DEFAULT_METHOD  # discover()'s default (discovery/pipeline/auto.py)
# methods/qk.py applies (edges), as the registry says; in this order in messages
QK_FIXABLE = registry.names("score", qk_fix=True) + registry.names("acdc", qk_fix=True) + (AUTO_METHOD,)
# on request only: measured to hurt more than help there (docs/benchmarks.md, "QK fix and the default pipeline")
QK_FIX_OFF_BY_DEFAULT = tuple(m.name for m in registry.METHODS if m.qk_fix == "request")
DEFAULT_TARGET = 0.9  # the faithfulness target of the default selection (discovery/pipeline/auto.py)
DEFAULT_TAU = registry.method("acdc").defaults["tau"]  # acdc()'s own; discover() defaults to a fraction:
DEFAULT_TAU_FRACTION = registry.method("acdc").defaults["tau_fraction"]  # tau = this x |m(full) - m(empty)|
ACDC_DEFAULT_METRIC = registry.method("acdc").defaults["metric"]  # Conmy et al.: distance from the clean outputs
DEFAULT_CANDIDATES = registry.method("eap-ig+acdc").defaults["candidates"]
DEFAULT_SPARSITY = registry.method("edge-pruning").defaults["sparsity"]  # edge-pruning's target
DEFAULT_TRAIN_STEPS = registry.method("edge-pruning").defaults["train_steps"]
DEFAULT_TOP_N = 100  # no longer a default of edge selection (the faithfulness target is); kept for callers
MAX_TAUS = 64
MAX_EDGES = 10_000_000
MAX_BUILTIN_ROWS = 100_000  # rows of a built-in task (a server may allow fewer: CIRCUITRY_MAX_ROWS)
DEFAULT_BUILTIN_ROWS = 200
# the labeling package's backends and scorers (tests/test_options.py checks they match labeling.label)
LABEL_BACKENDS = ("heuristic", "openai")
LABEL_SCORERS = ("auto", "evidence_agreement", "llm")

MethodName = Literal[ALL_METHODS]  # type: ignore[valid-type]
MetricName = Literal[tuple(METRIC_NAMES)]  # type: ignore[valid-type]
InterventionName = Literal[tuple(INTERVENTIONS)]  # type: ignore[valid-type]


def _one_or_many(v: Any) -> Any:
    return [v] if isinstance(v, (int, float)) and not isinstance(v, bool) else v


Finite = Annotated[float, Field(allow_inf_nan=False)]
Tau = Annotated[float, Field(gt=0, le=1e6, allow_inf_nan=False)]
Rows = Annotated[int, Field(ge=1, le=MAX_BUILTIN_ROWS, description="rows of a built-in task")]
Seed = Annotated[int, Field(ge=0, le=2**31 - 1, description="seed of a built-in task")]


def _numeric_kind(annotation) -> str | None:
    """"int", "float", "list" (of numbers) or None for a field's annotation (Optional and unions unwrapped)."""
    import types
    import typing

    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is Annotated:
        return _numeric_kind(args[0])
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        kinds = {_numeric_kind(a) for a in args if a is not type(None)}
        kinds.discard(None)
        return kinds.pop() if len(kinds) == 1 else None
    if annotation in (int, float):
        return annotation.__name__
    if typing.get_origin(annotation) is list and args and _numeric_kind(args[0]) in ("int", "float"):
        return "list"
    return None


class Strict(BaseModel):
    """A request model that refuses unknown fields (the service's job and watch bodies derive from it too)
    and numbers given as strings or booleans ("n": "4", "top_n": true): no coercion at the API boundary."""
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    @field_validator("*", mode="before")
    @classmethod
    def _numbers_are_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        kind = _numeric_kind(cls.model_fields[info.field_name].annotation)
        if kind is None:
            return value
        for v in value if kind == "list" and isinstance(value, (list, tuple)) else [value]:
            if isinstance(v, (str, bool)):
                raise ValueError(f"field '{info.field_name}' must be a number, not {type(v).__name__} {v!r} "
                                 "(no string or boolean is read as a number)")
        return value
        for name, field in cls.model_fields.items():
            kind = _numeric_kind(field.annotation)
            if kind is None or name not in data:
                continue
            value = data[name]
            values = value if kind == "list" and isinstance(value, (list, tuple)) else [value]
            for v in values:
                if isinstance(v, (str, bool)):
                    raise ValueError(f"field '{name}' must be a number, not {type(v).__name__} {v!r} "
                                     "(no string or boolean is read as a number)")
        return data


class MethodOptions(Strict):
    # the spec says what the validator below refuses: tau and candidates only with an ACDC method
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), json_schema_extra={
        "if": {"not": {"required": ["name"], "properties": {"name": {"enum": list(ACDC_METHODS)}}}},
        "then": {"properties": {"tau": {"type": "null"}, "candidates": {"type": "null"}}}})
    name: MethodName = Field(DEFAULT_METHOD, description="auto (EAP-IG with the QK fix, the smallest circuit meeting "
                                                         "the faithfulness target, exact verification when that is "
                                                         "over 40% of the edges), an edge scoring (then selection), "
                                                         "or acdc / eap-ig+acdc (the circuit by tau)")
    metric: MetricName | None = Field(None, description="default: kl for ACDC; else the built-in task's own "
                                                        "metric, else logit_diff")
    intervention: InterventionName = Field("patching", description="what an edge out of the circuit carries")
    steps: int = Field(5, ge=1, le=256, description="interpolation steps (eap-ig, eap-ig-activations, eap-ig+acdc)")
    batch_size: int = Field(16, ge=1, le=4096)
    curve: bool = Field(True, description="also compute the faithfulness curve (CPR/CMD)")
    tau: Annotated[list[Tau], BeforeValidator(_one_or_many)] | None = Field(
        None, min_length=1, max_length=MAX_TAUS,
        description=f"acdc, eap-ig+acdc: remove an edge when the metric moves by at most tau (default "
                    f"{DEFAULT_TAU_FRACTION:g} x the behaviour |clean - corrupted| in the metric used); "
                    "several give one circuit per tau from one run")
    candidates: int | None = Field(None, ge=1, le=MAX_EDGES, description="eap-ig+acdc: ACDC decides over the top-K "
                                                                         f"edges by |EAP-IG score| (default {DEFAULT_CANDIDATES})")
    kv_edges: Literal["head", "grouped"] = Field(
        "head", description="a grouped-query model's k/v edges per query head (MIB's names) or per key/value head")
    level: Literal[LEVELS] = Field(  # type: ignore[valid-type]
        "edge", description="what is scored and selected: edges, nodes (each head and MLP one unit) or neurons "
                            "(each output dimension of each node); top_n/threshold then count nodes or neurons "
                            "(default: the fewest meeting the faithfulness target)")
    positions: bool = Field(False, description="position-aware edges: every edge once per (source position -> "
                                               "destination position) pair; rows must share one token layout")
    position_names: list[Annotated[str, Field(min_length=1, max_length=64)]] | None = Field(
        None, min_length=1, max_length=4096, description="with positions: a name for each token position of the "
                                                         "template (e.g. S1, IO, END), recorded in the circuit")
    qk_fix: bool | None = Field(None, description="score q/k edges through the exact attention pattern (AtP*'s QK "
                                                  "fix); default: on for eap, eap-ig, eap-ig+acdc and auto (on "
                                                  "request for clean-corrupted) at edge level without positions")
    sparsity: float | None = Field(None, ge=0, lt=1, allow_inf_nan=False,
                                   description=f"edge-pruning: the fraction of edges to remove (default {DEFAULT_SPARSITY})")
    lam: float | None = Field(None, ge=0, le=1e6, allow_inf_nan=False,
                              description="edge-pruning: an L0 penalty weight instead of a target sparsity")
    train_steps: int | None = Field(None, ge=1, le=100_000,
                                    description=f"edge-pruning: optimisation steps (default {DEFAULT_TRAIN_STEPS})")
    max_verify: int | None = Field(None, ge=0, le=1_000_000,
                                   description="auto: verify at most this many edges by exact patching when the "
                                               "target needs over 40% of the edges (default: at most 2000, within the "
                                               "time the scoring took; 0: never)")
    # method options other parts of discovery add go here

    @model_validator(mode="after")
    def _acdc_only(self):
        if self.name not in ACDC_METHODS and (self.tau is not None or self.candidates is not None):
            raise ValueError(f"tau and candidates apply to {' and '.join(ACDC_METHODS)}, not to '{self.name}'")
        learned = (self.sparsity, self.lam, self.train_steps)
        if self.name not in LEARNED_METHODS and any(x is not None for x in learned):
            raise ValueError(f"sparsity, lam and train_steps apply to {', '.join(LEARNED_METHODS)}, not to '{self.name}'")
        if self.max_verify is not None and self.name != AUTO_METHOD:
            raise ValueError(f"max_verify applies to {AUTO_METHOD}, not to '{self.name}'")
        if self.sparsity is not None and self.lam is not None:
            raise ValueError("give a target sparsity or an L0 penalty lam, not both")
        if self.name in LEARNED_METHODS and (self.level != "edge" or self.positions):
            raise ValueError(f"{self.name} learns edge masks: level edge, without positions")
        if self.name == "acdc" and self.candidates is not None:
            raise ValueError("candidates applies to eap-ig+acdc (plain acdc decides every edge)")
        # the default pipeline at node/neuron level runs the registry's method for it: nodes are few, so
        # each is measured (exact: n_sources patched forwards per batch); neurons are estimated (eap-ig)
        self.name = registry.method(self.name).at_level.get(self.level, self.name)
        allowed = {"node": NODE_METHODS, "neuron": NEURON_METHODS}.get(self.level)
        if allowed is not None and self.name not in allowed:
            raise ValueError(f"method '{self.name}' has no {self.level}-level scores; at level {self.level} "
                             f"choose one of {', '.join(allowed)}")
        if self.positions and self.name in ACDC_METHODS:
            raise ValueError(f"positions works with the scoring methods, not with {self.name}")
        if self.positions and self.level != "edge":
            raise ValueError(f"positions applies to edge circuits, not to level {self.level}")
        if self.position_names is not None and not self.positions:
            raise ValueError("position_names needs positions")
        if self.qk_fix and not self.qk_fixable:
            raise ValueError(f"the QK fix applies to {', '.join(QK_FIXABLE)} at edge (or node) level without positions, "
                             f"not to '{self.name}'" + (f" at level {self.level}" if self.level != "edge" else "")
                             + (" with positions" if self.positions else ""))
        return self

    @property
    def acdc(self) -> bool:
        return registry.method(self.name).kind == "acdc"

    @property
    def qk_fixable(self) -> bool:
        # at node level a node's score is the sum of its (QK-fixed) outgoing edge scores (methods/node.py)
        return self.name in QK_FIXABLE and self.level in ("edge", "node") and not self.positions

    @property
    def use_qk_fix(self) -> bool:
        """The QK fix as it runs: on by default wherever it applies, but for QK_FIX_OFF_BY_DEFAULT."""
        if self.qk_fix is None:
            return self.qk_fixable and self.name not in QK_FIX_OFF_BY_DEFAULT
        return self.qk_fixable and self.qk_fix


class SelectionOptions(Strict):
    target: float | None = Field(None, gt=0, lt=1, allow_inf_nan=False,
                                 description=f"keep the smallest top-k circuit whose faithfulness is within 1 - T of 1 "
                                             f"(the default selection of edges, nodes, neurons and positional edges, "
                                             f"T = {DEFAULT_TARGET})")
    top_n: int | None = Field(None, ge=1, le=MAX_EDGES, description="keep the N most important edges")
    threshold: Finite | None = Field(None, description="keep edges with importance >= T")
    greedy: int | None = Field(None, ge=1, le=MAX_EDGES, description="grow N edges from the logits")
    absolute: bool = Field(True, description="rank by |score| (false: by signed importance)")
    prune: bool = Field(True, description="drop edges with no path from input to logits")

    @model_validator(mode="after")
    def _at_most_one(self):
        if sum(x is not None for x in (self.top_n, self.threshold, self.greedy, self.target)) > 1:
            raise ValueError(f"give at most one of top_n, threshold, greedy, target (default: faithfulness target "
                             f"{DEFAULT_TARGET})")
        return self

    @property
    def chosen(self) -> bool:
        return any(x is not None for x in (self.top_n, self.threshold, self.greedy, self.target))


class LabelOptions(Strict):
    """labeling.label_circuit's options that a request can carry."""
    components: list[Annotated[str, Field(min_length=1, max_length=32)]] | None = Field(
        None, max_length=4096, description="label these components (default: the circuit's heads and MLPs)")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="evidence seed")
    scorer: Literal[LABEL_SCORERS] = "auto"  # type: ignore[valid-type]


class LabelingOptions(Strict):
    backend: Literal[("none",) + LABEL_BACKENDS] = Field(  # type: ignore[valid-type]
        "none", description="'none' (no labels), 'heuristic' (offline) or 'openai' (CIRCUITRY_LLM_BASE_URL)")
    options: LabelOptions = Field(default_factory=LabelOptions)

    @property
    def wanted(self) -> bool:
        return self.backend != "none"


class DiscoveryOptions(Strict):
    method: MethodOptions = Field(default_factory=MethodOptions)
    selection: SelectionOptions = Field(default_factory=SelectionOptions)
    labeling: LabelingOptions = Field(default_factory=LabelingOptions)

    @model_validator(mode="after")
    def _acdc_selects_itself(self):
        if self.method.acdc and self.selection.chosen:
            raise ValueError(f"{self.method.name} decides the circuit itself by tau; drop top_n/threshold/greedy/target")
        s = self.selection
        if self.method.name == AUTO_METHOD and any(x is not None for x in (s.top_n, s.threshold, s.greedy)):
            raise ValueError("auto selects by a faithfulness target (target); for top_n/threshold/greedy choose a "
                             "scoring method, e.g. eap-ig")
        if self.method.level != "edge" and self.selection.greedy is not None:
            raise ValueError(f"greedy grows edges from the logits; at level {self.method.level} use top_n or threshold")
        if self.method.positions and self.selection.greedy is not None:
            raise ValueError("positions selects by top_n or threshold (greedy growth is not position-aware)")
        return self

    # ------------------------------------------------------------------------------- flat form
    @classmethod
    def from_flat(cls, base: "DiscoveryOptions | None" = None, *, spell=lambda key: key, **flat) -> "DiscoveryOptions":
        """The options from discover()'s keywords (None: the default, or `base`'s value); a bad value
        raises UserError naming the keyword as `spell` writes it (flat_error)."""
        unknown = sorted(set(flat) - set(FLAT))
        if unknown:
            raise UserError(f"unknown discovery option(s): {', '.join(unknown)}")
        given = {k: v for k, v in flat.items() if v is not None}
        if base is not None and not given:
            return base
        data = (base or cls()).model_dump()
        for key, value in given.items():
            group, field = FLAT[key]
            data[group][field] = value.model_dump() if isinstance(value, BaseModel) else value
        return validated(type(base) if base is not None else cls, data, spell)

    def flat(self) -> dict[str, Any]:
        """The options as discover()'s keywords."""
        return {key: getattr(getattr(self, group), field) for key, (group, field) in FLAT.items()}

    def resolved_metric(self, task_metric: str | None) -> str:
        if self.method.metric:
            return self.method.metric
        return ACDC_DEFAULT_METRIC if self.method.acdc else task_metric or "logit_diff"


def _flat_names() -> dict[str, tuple[str, str]]:
    names = {"method": ("method", "name"), "label_backend": ("labeling", "backend"),
             "label_options": ("labeling", "options")}
    for group, model in (("method", MethodOptions), ("selection", SelectionOptions)):
        for field in model.model_fields:
            if (group, field) not in names.values():
                names.setdefault(field, (group, field))
    return names


FLAT = _flat_names()
_NESTED = {v: k for k, v in FLAT.items()}
_GROUPS = ("method", "selection", "labeling")


def flat_error(exc: ValidationError, spell=lambda key: key) -> UserError:
    """The first problem of a ValidationError of DiscoveryOptions as one line, the option named by
    its flat name passed through `spell` (the CLI passes `--top-n` for top_n)."""
    err = exc.errors()[0]
    loc = [str(x) for x in err.get("loc", ())]
    if loc and loc[0] in _GROUPS:  # a group's field, or (one element) a check across the group's fields
        key = _NESTED.get((loc[0], loc[1])) if len(loc) >= 2 else None
    else:
        key = loc[0] if loc else None
    msg = _plain(err)
    if key is None:
        return UserError(msg)
    value = err.get("input")
    shown = f" (got {value!r})" if not isinstance(value, (dict, list)) and value is not None else ""
    return UserError(f"{spell(key)}: {msg}{shown}")


def _plain(err: dict) -> str:
    ctx, kind = err.get("ctx") or {}, err.get("type", "")
    words = {"greater_than_equal": ("must be at least", "ge"), "less_than_equal": ("must be at most", "le"),
             "greater_than": ("must be greater than", "gt"), "less_than": ("must be less than", "lt"),
             "too_short": ("needs at least", "min_length"), "too_long": ("takes at most", "max_length")}
    if kind in words and words[kind][1] in ctx:
        text, key = words[kind]
        return f"{text} {ctx[key]:g}" if isinstance(ctx[key], float) else f"{text} {ctx[key]}" + \
            (" value(s)" if kind in ("too_short", "too_long") else "")
    if kind == "finite_number":
        return "must be a finite number"
    return err.get("msg", "invalid").removeprefix("Value error, ")


def validated(model, data, spell=lambda key: key):
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise flat_error(exc, spell) from None


class WorkerOptions(Strict):
    """Where discover() runs its scoring: Ray workers (discovery/pipeline/distributed.py)."""
    workers: int | None = Field(None, ge=1, le=1024, description="shard the examples over N Ray workers")
    worker_cpus: float | None = Field(None, gt=0, le=1024, description="Ray CPUs per worker")
    worker_gpus: float | None = Field(None, ge=0, le=64, description="Ray GPUs per worker")

    @model_validator(mode="after")
    def _need_workers(self):
        if self.workers is None and (self.worker_cpus is not None or self.worker_gpus is not None):
            raise ValueError("worker_cpus/worker_gpus need workers N")
        return self


class BuiltinTaskOptions(Strict):
    """Size and seed of a built-in task (CLI --n/--seed, the API's task.n/task.seed)."""
    n: Rows = DEFAULT_BUILTIN_ROWS
    seed: Seed = 0


__all__ = ["DiscoveryOptions", "MethodOptions", "SelectionOptions", "LabelingOptions", "LabelOptions",
           "WorkerOptions", "BuiltinTaskOptions", "FLAT", "flat_error", "validated", "ACDC_METHODS", "ALL_METHODS",
           "LEARNED_METHODS",
           "DEFAULT_METHOD", "DEFAULT_TAU", "DEFAULT_TAU_FRACTION", "DEFAULT_CANDIDATES", "DEFAULT_TOP_N", "MAX_BUILTIN_ROWS"]
