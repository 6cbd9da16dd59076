"""Circuits across training: one point per checkpoint, in training order, with the circuit's size,
faithfulness, the model's own behaviour (the clean metric) and the components that entered or left
since the previous checkpoint; and a PNG chart of it."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel

from .circuit import Circuit
from .diff import labels_of

_STEP = re.compile(r"(\d+)(?!.*\d)")  # the last number in a revision name: step-000500, step1000, ckpt_3


class TimelinePoint(BaseModel):
    revision: str | None
    step: int | None  # parsed from the revision's last number; None when it has none
    n_edges: int
    n_nodes: int
    faithfulness: float | None
    clean_metric: float | None  # the full model on the clean prompts
    behaviour: float | None  # |clean - corrupted|: how much the model's output depends on the task's difference,
    # what the circuit has to explain (for KL, the corrupted prompts' distance from the clean output)
    metric: str
    components: list[str]  # heads and MLPs in the circuit
    entered: list[str]  # components in this circuit and not in the previous point's
    left: list[str]
    roles: dict[str, list[str]] = {}  # role tag -> components with it (labeled circuits; "other" left out)
    circuit_id: str | None = None  # where the circuit is stored (a file path, a service id)


def step_of(revision: str | None) -> int | None:
    m = _STEP.search(revision or "")
    return int(m.group(1)) if m else None


def _roles(c: Circuit) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for component, (_, tags) in labels_of(c).items():
        for tag in tags:
            if tag != "other":
                out.setdefault(tag, []).append(component)
    return {tag: sorted(comps) for tag, comps in sorted(out.items())}


def timeline(circuits: list[tuple[str | None, Circuit]]) -> list[TimelinePoint]:
    """Points for (circuit_id, circuit) pairs of checkpoints of one model on one task, sorted by step
    (checkpoints without a step number keep their given order, after the numbered ones)."""
    order = sorted(range(len(circuits)), key=lambda i: (step_of(circuits[i][1].model.revision) is None,
                                                        step_of(circuits[i][1].model.revision) or 0, i))
    points, previous = [], set()
    for i in order:
        cid, c = circuits[i]
        comps = sorted(n.id for n in c.nodes if n.in_circuit and n.id not in ("input", "logits"))
        now = set(comps)
        points.append(TimelinePoint(
            revision=c.model.revision, step=step_of(c.model.revision), n_edges=sum(e.in_circuit for e in c.edges),
            n_nodes=len(now), faithfulness=c.metrics.faithfulness, clean_metric=c.metrics.clean,
            behaviour=None if c.metrics.clean is None or c.metrics.corrupted is None
            else abs(c.metrics.clean - c.metrics.corrupted),
            metric=c.metrics.metric, components=comps, entered=sorted(now - previous) if points else comps,
            left=sorted(previous - now), roles=_roles(c), circuit_id=cid))
        previous = now
    return points


def plot_timeline(points: list[TimelinePoint], path: str | Path, title: str = "") -> Path:
    """Circuit size (edges) and faithfulness per checkpoint, with the behaviour beside them."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [p.step if p.step is not None else i for i, p in enumerate(points)]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 5.5), sharex=True)
    top.plot(xs, [p.n_edges for p in points], marker="o", color="tab:blue")
    top.set_ylabel("edges in circuit", color="tab:blue")
    right = top.twinx()
    right.plot(xs, [p.behaviour for p in points], marker="s", color="tab:green", ls="--")
    right.set_ylabel(f"behaviour |clean - corrupted| ({points[0].metric if points else 'metric'})", color="tab:green")
    bottom.plot(xs, [p.faithfulness for p in points], marker="o", color="tab:red")
    bottom.axhline(1.0, color="grey", lw=0.8, ls="--")
    bottom.set_ylabel("faithfulness")
    bottom.set_xlabel("training step" if all(p.step is not None for p in points) else "checkpoint")
    before: set = set()
    for i, (p, x) in enumerate(zip(points, xs)):  # mark what appeared: new roles (labeled), else new components
        new = [t for t in p.roles if t not in before] if any(q.roles for q in points) else (p.entered if i else [])
        before = set(p.roles)
        if new:
            top.annotate("+" + ", +".join(new[:3]) + ("…" if len(new) > 3 else ""), (x, p.n_edges),
                         textcoords="offset points", xytext=(0, 7), fontsize=7, ha="center")
    top.set_title(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
