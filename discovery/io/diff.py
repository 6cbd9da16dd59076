"""Two circuits side by side: edges gained and lost, score changes, edge Jaccard, nodes whose label or
role tags changed, and the faithfulness of each. For checkpoints of one model (circuits over the same
graph); circuits of differently shaped models share only the edges both graphs have, and the diff says
how many it could not compare."""

from __future__ import annotations

import math

from pydantic import BaseModel

from ..core.circuit import Circuit


class EdgeChange(BaseModel):
    name: str
    score_a: float | None
    score_b: float | None
    delta: float | None  # score_b - score_a, when both exist


class NodeChange(BaseModel):
    component: str
    label_a: str | None
    label_b: str | None
    tags_a: list[str]
    tags_b: list[str]


class Side(BaseModel):
    model: str
    revision: str | None
    method: str
    task_hash: str
    n_edges: int
    n_nodes: int
    faithfulness: float | None


class CircuitDiff(BaseModel):
    a: Side
    b: Side
    same_task: bool
    edges_gained: list[EdgeChange]  # in B's circuit, not in A's
    edges_lost: list[EdgeChange]  # in A's circuit, not in B's
    edges_kept: int
    jaccard: float  # |A ∩ B| / |A ∪ B| over in-circuit edges; 1.0 when both are empty
    score_changes: list[EdgeChange]  # edges in either circuit, by |delta| descending
    nodes_gained: list[str]
    nodes_lost: list[str]
    label_changes: list[NodeChange]  # components labeled in both whose label or role tags differ
    edges_only_in_a: int  # edge names one graph lacks (differently shaped models)
    edges_only_in_b: int

    def summary(self) -> str:
        fa, fb = (_fmt(s.faithfulness) for s in (self.a, self.b))
        return (f"A {self.a.n_edges} edges (faithfulness {fa}) -> B {self.b.n_edges} edges (faithfulness {fb}); "
                f"+{len(self.edges_gained)} gained, -{len(self.edges_lost)} lost, {self.edges_kept} kept; "
                f"Jaccard {self.jaccard:.3f}; nodes +{len(self.nodes_gained)} -{len(self.nodes_lost)}; "
                f"{len(self.label_changes)} label changes")


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _side(c: Circuit) -> Side:
    return Side(model=c.model.name, revision=c.model.revision, method=c.method.name, task_hash=c.task.content_hash,
                n_edges=sum(e.in_circuit for e in c.edges), n_nodes=sum(n.in_circuit for n in c.nodes),
                faithfulness=c.metrics.faithfulness)


def labels_of(c: Circuit) -> dict[str, tuple[str | None, list[str]]]:
    """component -> (label, role tags) for labeled circuits (labeling.LabeledCircuit, whose records
    discovery does not import, or plain dicts); {} otherwise."""
    out = {}
    for record in getattr(c, "labels", None) or []:
        get = record.get if isinstance(record, dict) else lambda k, r=record: getattr(r, k, None)
        out[get("component")] = (get("label"), list(get("role_tags") or []))
    return out


def _change(name: str, sa: dict, sb: dict) -> EdgeChange:
    a, b = sa.get(name), sb.get(name)
    delta = b - a if a is not None and b is not None else None
    return EdgeChange(name=name, score_a=a, score_b=b, delta=delta)


def diff_circuits(a: Circuit, b: Circuit, top: int | None = 50) -> CircuitDiff:
    """The diff of B against A. `top` caps score_changes (None: every edge in either circuit)."""
    sa = {e.name: e.score for e in a.edges}
    sb = {e.name: e.score for e in b.edges}
    in_a = {e.name for e in a.edges if e.in_circuit}
    in_b = {e.name for e in b.edges if e.in_circuit}
    union = in_a | in_b
    changes = [_change(n, sa, sb) for n in sorted(union)]
    changes.sort(key=lambda c: -abs(c.delta) if c.delta is not None and not math.isnan(c.delta) else 0.0)
    nodes_a = {n.id for n in a.nodes if n.in_circuit}
    nodes_b = {n.id for n in b.nodes if n.in_circuit}
    la, lb = labels_of(a), labels_of(b)
    label_changes = [NodeChange(component=k, label_a=la[k][0], label_b=lb[k][0], tags_a=la[k][1], tags_b=lb[k][1])
                     for k in sorted(set(la) & set(lb)) if la[k][0] != lb[k][0] or sorted(la[k][1]) != sorted(lb[k][1])]
    return CircuitDiff(
        a=_side(a), b=_side(b), same_task=a.task.content_hash == b.task.content_hash,
        edges_gained=[_change(n, sa, sb) for n in sorted(in_b - in_a)],
        edges_lost=[_change(n, sa, sb) for n in sorted(in_a - in_b)],
        edges_kept=len(in_a & in_b), jaccard=len(in_a & in_b) / len(union) if union else 1.0,
        score_changes=changes if top is None else changes[:top],
        nodes_gained=sorted(nodes_b - nodes_a), nodes_lost=sorted(nodes_a - nodes_b), label_changes=label_changes,
        edges_only_in_a=len(sa.keys() - sb.keys()), edges_only_in_b=len(sb.keys() - sa.keys()))
