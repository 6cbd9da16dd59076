"""label_circuit: evidence -> heuristic labels -> (LLM labels) -> held-out scores -> a LabeledCircuit.

The public entry point for the CLI, `circuitry discover --label` and the service. It returns a new
object and never mutates the circuit it is given."""

from __future__ import annotations

import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from discovery.core.progress import progress as progress_bar

from discovery.core.circuit import Circuit
from discovery.core.errors import TaskError, UserError
from discovery.core.nodes import group_heads, head_id, mlp_id, parse_node
from discovery.model.adapters import LoadedModel
from discovery.model.tasks import Task

from . import heuristic, prompts
from .detection import detection_score, heldout_positions, llm_detection_score, measured_effects
from .evidence import EvidenceConfig, TokenNames, collect_evidence, split_rows
from .llm import LLMClient, LLMConfig, llm_configured
from .schema import (LABELED_SCHEMA_VERSION, EdgeLabel, LabeledCircuit, LabelingInfo, LabelRecord, Provenance,
                     ScoreResult, Usage)
from .scoring import agreement_head, agreement_mlp, llm_score
from .verify import verify

BACKENDS = ("heuristic", "openai")
SCORERS = ("auto", "evidence_agreement", "llm")
ENDPOINT_LABELS = {"input": "token and position embeddings", "logits": "output logits"}


def circuit_components(circuit: Circuit) -> list[str]:
    """Heads and MLPs in the circuit, in graph order (key/value heads are labeled through their query heads)."""
    return [n.id for n in circuit.nodes if n.in_circuit and n.kind in ("attention", "mlp")]


def _skipped_kv(circuit: Circuit) -> list[LabelRecord]:
    out = []
    for n in circuit.nodes:
        if n.in_circuit and n.kind == "kv_head":
            out.append(LabelRecord(component=n.id, kind="head", label="Shared key/value head (not labeled)",
                                   description="A grouped-query key/value head; its query heads carry the labels.",
                                   role_tags=["other"], confidence=0.0, status="skipped",
                                   provenance=Provenance(backend="heuristic", labeler_version=heuristic.LABELER_VERSION)))
    return out


def _check(circuit: Circuit, model: LoadedModel, components: list[str]) -> None:
    circuit.in_circuit(circuit.graph_for(model.adapter))  # same shape, every edge known (UserError otherwise)
    a = model.adapter
    valid = {head_id(layer, h) for layer in range(a.n_layers) for h in range(a.n_heads)}
    valid |= {mlp_id(layer) for layer in range(a.n_layers)}
    bad = [c for c in components if c not in valid]
    if bad:
        raise UserError(f"cannot label {bad[0]!r}: components are heads 'a{{L}}.h{{H}}' and MLPs 'm{{L}}' of this model")


def _detection_metric(circuit: Circuit):
    """(metric, intervention) the circuit was found with, or (None, why) when they cannot be rebuilt."""
    from discovery.core.errors import UserError as _UE
    from discovery.model.metrics import resolve_metric

    params = circuit.method.params or {}
    name = params.get("metric") or circuit.metrics.metric
    try:
        metric = resolve_metric(name)
    except _UE:
        return None, f"the circuit's metric '{name}' cannot be rebuilt from its name"
    return metric, params.get("intervention") or "patching"


def label_circuit(circuit: Circuit, model: LoadedModel, task: Task, backend: str = "heuristic", *,
                  components: list[str] | None = None, seed: int = 0, evidence: EvidenceConfig | None = None,
                  scorer: str = "auto", llm: LLMConfig | None = None, thresholds: dict | None = None,
                  progress: bool = False) -> LabeledCircuit:
    """Labels for the circuit's heads and MLPs (or the given `components`), each scored on held-out data.

    backend: "heuristic" (offline) or "openai" (any OpenAI-compatible endpoint; `llm` or the environment).
    scorer: "auto" (the LLM when one is configured, else the evidence agreement check), "llm" or
    "evidence_agreement". Every label is also scored by detection (labeling/detection.py), and its
    status set by labeling/verify.py. seed: the evidence seed (repeated tokens, token samples, decoys).
    progress: a bar over components on stderr."""
    started = time.perf_counter()
    if backend not in BACKENDS:
        raise UserError(f"unknown labeling backend '{backend}'; choose one of {', '.join(BACKENDS)}")
    if scorer not in SCORERS:
        raise UserError(f"unknown scorer '{scorer}'; choose one of {', '.join(SCORERS)}")
    comps = list(components) if components is not None else circuit_components(circuit)
    _check(circuit, model, comps)
    cfg = evidence or EvidenceConfig(seed=seed)
    if llm is None and (backend == "openai" or scorer == "llm" or (scorer == "auto" and llm_configured())):
        llm = LLMConfig.from_env()
    use_llm_scorer = scorer == "llm" or (scorer == "auto" and llm is not None)
    client = LLMClient(llm) if llm is not None and (backend == "openai" or use_llm_scorer) else None
    if client is not None:
        client.check()  # once, before any work: an unreachable endpoint is one line, now

    bars = progress_bar(total=len(comps) * (2 + (backend == "openai") + use_llm_scorer), desc="labeling", unit="step",
                file=sys.stderr, disable=not progress, leave=False)
    bundle = collect_evidence(model, task, circuit, comps, cfg, thresholds)
    bars.update(len(comps))
    records = heuristic.heuristic_labels(bundle.evidence, thresholds)
    names = TokenNames(model)
    workers = max(1, llm.concurrency) if llm is not None else 1

    if backend == "openai":
        from .llm_labeler import llm_label
        with ThreadPoolExecutor(workers) as pool:
            done = []
            for r in pool.map(lambda r: llm_label(client, r, model.name, task.name), records.values()):
                done.append(r)
                bars.update(1)
            records = {r.component: r for r in done}

    # Scores: the evidence agreement check always (offline, cheap); the LLM scorer when configured.
    for node, rec in records.items():
        if rec.kind == "head":
            rec.scores["evidence_agreement"] = agreement_head(rec.role_tags, bundle.pairs.get(node, []), bundle.heldout)
        else:
            rec.scores["evidence_agreement"] = agreement_mlp(rec, bundle.contexts.get(node, []), names,
                                                             bundle.heldout, cfg.seed)
    # Detection: where the label predicts the component matters, against its measured effect.
    metric, intervention = _detection_metric(circuit)
    positions = {}
    if metric is not None:
        try:
            effects = measured_effects(model, task, split_rows(task, cfg)[1], list(records), metric, intervention,
                                       cfg.batch_size)
            positions = {c: heldout_positions(effects[c], cfg.n_heldout, cfg.seed, c) for c in records}
        except TaskError as exc:  # e.g. unequal clean/corrupted lengths under patching
            intervention = f"not measured: {exc}"
    for node, rec in records.items():
        if node in positions:
            rec.scores["detection"] = detection_score(rec, positions[node], names, bundle.heldout, cfg.seed)
        else:  # intervention holds the reason
            rec.scores["detection"] = ScoreResult(scorer="detection", metric="roc_auc", data=bundle.heldout,
                                                  note=str(intervention))
        bars.update(1)
    if use_llm_scorer:
        rng = random.Random(cfg.seed)
        others = {node: [(r.label, r.description) for n2, r in records.items() if n2 != node and r.kind == rec.kind]
                  for node, rec in records.items()}
        pick = {node: (rng.choice(o) if o else None) for node, o in others.items()}

        def score(item):
            node, rec = item
            res = llm_score(client, rec, pick[node], bundle.pairs.get(node, []), bundle.contexts.get(node, []),
                            names, bundle.heldout, cfg.seed)
            det = llm_detection_score(client, rec, pick[node], positions.get(node, []), names, bundle.heldout,
                                      cfg.seed)
            return node, res, det
        with ThreadPoolExecutor(workers) as pool:
            for node, (result, usage, _), (det, det_usage) in pool.map(score, list(records.items())):
                records[node].scores["llm"] = result
                records[node].scores["llm_detection"] = det
                records[node].provenance.usage.add(usage)
                records[node].provenance.usage.add(det_usage)
                bars.update(1)
    bars.close()
    records = {node: verify(rec, thresholds) for node, rec in records.items()}

    labels = list(records.values()) + _skipped_kv(circuit)
    total = Usage()
    for r in labels:
        total.add(r.provenance.usage)
    info = LabelingInfo(
        backend=backend, scorer="llm" if use_llm_scorer else "evidence_agreement",
        labeler_version=heuristic.LABELER_VERSION if backend == "heuristic" else "openai-v1",
        evidence={**bundle.info, "task": task.source, "task_rows": len(task),
                  "same_task": task.content_hash == circuit.task.content_hash},
        thresholds=dict(heuristic.THRESHOLDS, **(thresholds or {})),
        llm_model=llm.model if client is not None else None, llm_base_url=llm.base_url if client is not None else None,
        template_version=prompts.TEMPLATE_VERSION if backend == "openai" else None, usage=total,
        wall_time_s=round(time.perf_counter() - started, 3))
    base = circuit.model_dump(exclude={"labels", "edge_labels", "labeling", "schema_version"})
    labeled = LabeledCircuit(**base, schema_version=LABELED_SCHEMA_VERSION, labels=labels, labeling=info)
    labeled.edge_labels = edge_labels(labeled)
    return labeled


def edge_labels(labeled: LabeledCircuit) -> list[EdgeLabel]:
    """Every in-circuit edge with its score, slot and its endpoints' labels."""
    by = {r.component: r.label for r in labeled.labels}
    group = labeled.model.n_heads // max(1, labeled.model.n_kv_heads)

    def name(node: str) -> str | None:
        if node in ENDPOINT_LABELS:
            return ENDPOINT_LABELS[node]
        if ".kv" in node and node not in by:  # a shared key/value head: its query heads' labels
            kv = parse_node(node)
            heads = group_heads(kv.layer, kv.head, group)
            found = [f"{h}: {by[h]}" for h in heads if h in by]
            return "; ".join(found) or None
        return by.get(node)

    return [EdgeLabel(name=e.name, source=e.source, target=e.target, slot=e.slot, score=e.score,
                      source_label=name(e.source), target_label=name(e.target))
            for e in labeled.edges if e.in_circuit]
