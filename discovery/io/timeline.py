"""Circuits across training: one point per checkpoint, in training order, with the circuit's size,
faithfulness, the model's own behaviour and the components that entered or left since the previous
checkpoint; and a PNG chart of it.

behaviour = d * (clean - corrupted), the task-mean metric of the full model on the clean prompts minus
that on the corrupted prompts, with d = +1 for a higher-is-better metric and -1 for a lower-is-better
one (KL): positive when the model does the task, negative when the corrupted prompts score better (the
mean of discovery/pipeline/sanity.py's per-example b_i). A point carries its circuit's `warnings` (sanity.py: "no
behaviour", "behaviour within noise", "target missed"): its faithfulness then measures little, and the
text, the chart and the API say so at that point."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel

from ..core.circuit import Circuit
from .diff import labels_of

_STEP = re.compile(r"(\d+)(?!.*\d)")  # the last number in a revision name: step-000500, step1000, ckpt_3


class TimelinePoint(BaseModel):
    revision: str | None
    step: int | None  # parsed from the revision's last number; None when it has none
    n_edges: int
    n_nodes: int
    faithfulness: float | None
    clean_metric: float | None  # the full model on the clean prompts
    behaviour: float | None  # d * (clean - corrupted) (module docstring): signed, in the metric's direction; what
    # the circuit has to explain (for KL, the corrupted prompts' distance from the clean output)
    metric: str
    components: list[str]  # heads and MLPs in the circuit
    entered: list[str]  # components in this circuit and not in the previous point's
    left: list[str]
    roles: dict[str, list[str]] = {}  # role tag -> components with it (labeled circuits; "other" left out)
    circuit_id: str | None = None  # where the circuit is stored (a file path, a service id)
    warnings: list[str] = []  # the circuit's result warnings (discovery/pipeline/sanity.py): its faithfulness means little

    @property
    def flags(self) -> list[str]:
        """Each warning's short name ("no behaviour", "behaviour within noise", "target missed")."""
        return [w.split(":", 1)[0] for w in self.warnings]


def step_of(revision: str | None) -> int | None:
    m = _STEP.search(revision or "")
    return int(m.group(1)) if m else None


def higher_is_better(c: Circuit) -> bool:
    """The direction of the circuit's metric: recorded with a user metric, else the built-in metric's."""
    from ..model.metrics import METRICS

    recorded = c.method.params.get("higher_is_better")
    if recorded is not None:
        return bool(recorded)
    metric = METRICS.get(c.method.params.get("metric", c.metrics.metric))
    return True if metric is None else metric.higher_is_better


def behaviour_of(c: Circuit) -> float | None:
    """d * (clean - corrupted) (module docstring), None when either was not measured."""
    if c.metrics.clean is None or c.metrics.corrupted is None:
        return None
    return (1.0 if higher_is_better(c) else -1.0) * (c.metrics.clean - c.metrics.corrupted)


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
            behaviour=behaviour_of(c), metric=c.metrics.metric, components=comps,
            entered=sorted(now - previous) if points else comps, left=sorted(previous - now), roles=_roles(c),
            circuit_id=cid, warnings=list(c.warnings)))
        previous = now
    return points


def _num(x: float | None, sign: str = "") -> str:
    return "n/a" if x is None else f"{x:{sign}.3f}"


def point_line(p: TimelinePoint) -> str:
    """One checkpoint as text (after its name): size, faithfulness with the point's warnings beside it,
    the signed behaviour, components entered (+) and left (-), roles."""
    moved = " ".join(["+" + c for c in p.entered] + ["-" + c for c in p.left])
    roles = "; ".join(f"{tag}: {','.join(comps)}" for tag, comps in p.roles.items())
    flags = f" [warning: {'; '.join(p.flags)}]" if p.warnings else ""
    return (f"edges {p.n_edges:4d}  faithfulness {_num(p.faithfulness)}{flags}  behaviour ({p.metric}) "
            f"{_num(p.behaviour, '+')}  {moved}" + (f"  [{roles}]" if roles else ""))


def plot_timeline(points: list[TimelinePoint], path: str | Path, title: str = "") -> Path:
    """timeline_figure(points, title) written as a PNG."""
    import matplotlib.pyplot as plt

    fig = timeline_figure(points, title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def timeline_figure(points: list[TimelinePoint], title: str = ""):
    """Circuit size (edges) and the signed behaviour per checkpoint (top), faithfulness (bottom). A
    point with warnings is drawn hollow in red and named ("no behaviour", ...) on both panels: its
    faithfulness measures little."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [p.step if p.step is not None else i for i, p in enumerate(points)]
    flagged = [bool(p.warnings) for p in points]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 5.8), sharex=True)
    top.plot(xs, [p.n_edges for p in points], marker="o", color="tab:blue")
    top.set_ylabel("edges in circuit", color="tab:blue")
    right = top.twinx()
    metric = points[0].metric if points else "metric"
    right.plot(xs, [p.behaviour for p in points], marker="s", color="tab:green", ls="--")
    right.axhline(0.0, color="tab:green", lw=0.6, ls=":")  # below it the corrupted prompts score better
    right.set_ylabel(f"behaviour ({metric}, signed)", color="tab:green")
    bottom.plot(xs, [p.faithfulness for p in points], marker="o", color="tab:orange")
    bottom.axhline(1.0, color="grey", lw=0.8, ls="--")
    bottom.set_ylabel("faithfulness")
    bottom.set_xlabel("training step" if all(p.step is not None for p in points) else "checkpoint")
    for ax, values in ((right, [p.behaviour for p in points]), (bottom, [p.faithfulness for p in points])):
        fx = [(x, v, p) for x, v, p, f in zip(xs, values, points, flagged) if f and v is not None]
        if fx:
            ax.scatter([x for x, _, _ in fx], [v for _, v, _ in fx], s=110, facecolors="white", edgecolors="crimson",
                       linewidths=1.8, zorder=5, label="warning: means little")
            for x, v, p in fx:
                ax.annotate(", ".join(p.flags), (x, v), textcoords="offset points", xytext=(0, -13), fontsize=7,
                            ha="center", color="crimson")
    if any(flagged):
        bottom.legend(fontsize=7, loc="best")
    before: set = set()
    for i, (p, x) in enumerate(zip(points, xs)):  # mark what appeared: new roles (labeled), else new components
        new = [t for t in p.roles if t not in before] if any(q.roles for q in points) else (p.entered if i else [])
        before = set(p.roles)
        if new:
            top.annotate("+" + ", +".join(new[:3]) + ("…" if len(new) > 3 else ""), (x, p.n_edges),
                         textcoords="offset points", xytext=(0, 7), fontsize=7, ha="center")
    top.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig
