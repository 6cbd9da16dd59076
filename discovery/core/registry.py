"""The method registry: one torch-free table of every discovery method and its facts, read by the
names users type (names.py), option validation (pipeline/options.py), the CLI's choices, the edge
scorers' dispatch (methods/scoring.py) and discover()'s dispatch (pipeline/discover.py).

A method is one row:
- name: what users type (`--method`, `method=`, the API's `method.name`);
- kind: "score" (a score per edge, then a selection: top-n / threshold / greedy / the faithfulness
  target), "acdc" (decides the circuit itself by tau), "learned" (learns an edge mask) or "pipeline"
  (the default: scoring, selection and verification together, pipeline/auto.py);
- function: "module:function" under discovery.methods that computes it (loaded when used, so that
  this table stays light); None for the pipeline;
- stepped: takes `steps` (interpolation steps; must be at least 1);
- qk_fix: "default" (the QK fix, methods/qk.py, is on unless turned off), "request" (on request only:
  measured to hurt more than help, docs/benchmarks.md) or "no";
- levels: the levels it scores ("edge", "node", "neuron"); at_level: the method a pipeline runs at
  another level instead (auto: exact nodes, EAP-IG neurons);
- defaults: its own option defaults (tau, tau_fraction, candidates, metric, sparsity, train_steps).

Adding a method: its module under discovery/methods/ and one row here. The table's order is the
order users see (CLI choices, error messages)."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

KINDS = ("pipeline", "score", "acdc", "learned")


@dataclass(frozen=True)
class MethodSpec:
    name: str
    kind: str
    function: str | None = None
    stepped: bool = False
    qk_fix: str = "no"
    levels: tuple[str, ...] = ("edge",)
    at_level: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    defaults: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def qk_fixable(self) -> bool:
        return self.qk_fix != "no"


_ALL_LEVELS = ("edge", "node", "neuron")
# Conmy et al.: KL from the clean model's outputs. tau: acdc()'s own default (an absolute threshold);
# tau_fraction: discover()'s default tau, that fraction of the behaviour |m(full) - m(empty)| in ACDC's metric
_ACDC = MappingProxyType({"tau": 0.01, "tau_fraction": 0.001, "metric": "kl"})

METHODS: tuple[MethodSpec, ...] = (
    MethodSpec("auto", "pipeline", None, qk_fix="default", levels=_ALL_LEVELS,
               at_level=MappingProxyType({"node": "exact", "neuron": "eap-ig"})),
    MethodSpec("eap", "score", "eap:eap", qk_fix="default", levels=_ALL_LEVELS),
    MethodSpec("eap-ig", "score", "eap_ig:eap_ig", stepped=True, qk_fix="default", levels=_ALL_LEVELS),
    MethodSpec("eap-ig-activations", "score", "eap_ig_activations:eap_ig_activations", stepped=True,
               levels=_ALL_LEVELS),
    MethodSpec("clean-corrupted", "score", "clean_corrupted:clean_corrupted", qk_fix="request", levels=_ALL_LEVELS),
    MethodSpec("exact", "score", "exact:exact", levels=("edge", "node")),
    MethodSpec("acdc", "acdc", "acdc:acdc", defaults=_ACDC),
    MethodSpec("eap-ig+acdc", "acdc", "acdc:acdc", stepped=True, qk_fix="default",
               defaults=MappingProxyType(dict(_ACDC, candidates=1000))),
    MethodSpec("edge-pruning", "learned", "edge_pruning:edge_pruning",
               defaults=MappingProxyType({"sparsity": 0.95, "train_steps": 200})),
)
BY_NAME: Mapping[str, MethodSpec] = MappingProxyType({m.name: m for m in METHODS})
DEFAULT_METHOD = "auto"


def method(name: str) -> MethodSpec:
    """The row of a method (KeyError for an unknown name; callers say what to choose)."""
    return BY_NAME[name]


def names(kind: str | None = None, *, level: str | None = None, qk_fix: bool | None = None) -> tuple[str, ...]:
    """Method names in the table's order, of one kind, scoring one level, or with QK-fix support."""
    return tuple(m.name for m in METHODS if (kind is None or m.kind == kind)
                 and (level is None or level in m.levels and m.kind != "pipeline")
                 and (qk_fix is None or m.qk_fixable == qk_fix))
