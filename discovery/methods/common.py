"""What every method shares: the model, graph, task, metric and the reference activations."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Callable

import torch
from ..core.progress import progress as progress_bar

from ..core.errors import UserError
from ..core.graph import Graph
from ..model.metrics import Metric, resolve_metric
from ..model.adapters import LoadedModel
from ..core.names import INTERVENTIONS  # noqa: F401 (re-exported)
from ..engine.attention import head_writes
from ..engine.cached import RunCache
from ..engine.context import ReferenceRuns
from ..engine.patching import Activations, run
from ..task_library import as_task
from ..model.tasks import Batch, Task, check_equal_lengths, divergence_order, iter_batches


@dataclass(eq=False)
class Setup:
    """The run context of a method or an evaluation: its configuration (the fields below, fixed once
    made: a later change would not match the runs already kept; `on_batch` may be set) and the
    reference runs it shares (`runs`, engine/context.py: what an out-of-circuit edge carries, the
    batches' recorded runs and RunCaches within run_cache_bytes and write_cache_bytes)."""

    model: LoadedModel
    task: Task  # also a JSONL file's path or a built-in task's name, loaded for the model
    metric: Metric  # also a built-in name or the user's function (see discovery.model.metrics)
    batch_size: int = 16
    intervention: str = "patching"
    progress: bool = False
    # Head writes (d_head deltas pushed through the output projection) are cached during a backward
    # pass while they fit in this many bytes, and recomputed per stage beyond it: speed on small
    # problems, bounded memory on large ones.
    write_cache_bytes: int = 256 * 2**20
    # k/v edges of a grouped-query model: per query head ("head", MIB's names) or per key/value head
    # ("grouped"); see discovery/core/graph.py
    kv_edges: str = "head"
    # on_batch(done, total, desc): called before each batch a method or evaluation works on (done of
    # total in this pass; desc names the pass, None for evaluations) and once at the pass's end; it
    # may raise (discovery.core.errors.Cancelled) to stop the run within one batch. Progress, cancellation.
    on_batch: Callable[[int, int, str | None], None] | None = field(default=None, repr=False)
    # position-aware edges (discovery/engine/positions.py): every edge once per (src_pos, dst_pos) pair; the
    # task's rows must share one token layout. position_names: optional names of the P positions
    positions: bool = False
    position_names: list[str] | None = None
    # Evaluations on one setup reuse each data batch's clean and reference runs (a RunCache) while
    # they fit in this many bytes; beyond it, each evaluation reruns them.
    run_cache_bytes: int = 512 * 2**20
    graph: Graph = field(init=False)
    runs: ReferenceRuns = field(init=False, repr=False)

    def __post_init__(self):
        self.task = as_task(self.task, self.model)
        self.metric = resolve_metric(self.metric)
        if self.intervention not in INTERVENTIONS:
            raise UserError(f"unknown intervention '{self.intervention}'; choose one of {', '.join(INTERVENTIONS)}")
        if self.batch_size < 1:
            raise UserError(f"batch size must be at least 1 (got {self.batch_size})")
        if self.intervention == "patching":
            check_equal_lengths(self.task)  # a corrupted activation replaces the clean one position by position
        self.graph = Graph.from_adapter(self.model.adapter, kv_edges=self.kv_edges)
        if self.positions:
            from ..engine.positions import positional_graph
            self.graph = positional_graph(self.model.adapter, self.graph, self.task, self.position_names)
        self.runs = ReferenceRuns(self.adapter, self.graph, self.task, self.batch_size, self.intervention,
                                  run_cache_bytes=self.run_cache_bytes, write_cache_bytes=self.write_cache_bytes)
        self._order = None  # rows in batches: tasks.divergence_order
        self._made = True

    def __setattr__(self, name, value):
        if name != "on_batch" and getattr(self, "_made", False) and name in self.__dataclass_fields__:
            raise AttributeError(f"Setup.{name} is fixed once the setup is made (its runs depend on it); "
                                 "make a new Setup")
        object.__setattr__(self, name, value)

    @property
    def adapter(self):
        return self.model.adapter

    @property
    def device(self):
        return self.adapter.device

    def n_batches(self) -> int:
        return -(-len(self.task) // self.batch_size)

    def batches(self, desc: str | None = None, *, bar: bool = True, watch: bool = True):
        """The task's data batches; with `bar` a progress bar named desc (when progress is on), with
        `watch` on_batch(done, total, desc) before each and at the end. A pass that reports finer
        steps itself (tick) asks for neither."""
        if self._order is None:
            self._order = divergence_order(self.task)
        it = iter_batches(self.task, self.batch_size, device=self.device, order=self._order)
        total = self.n_batches()
        it = progress_bar(it, total=total, desc=desc, file=sys.stderr,
                          disable=not bar or not self.progress or desc is None, leave=False)
        return it if self.on_batch is None or not watch else self._watched(it, total, desc)

    def _watched(self, batches, total: int, desc: str | None):
        for done, batch in enumerate(batches):
            self.on_batch(done, total, desc)
            yield batch
        self.on_batch(total, total, desc)

    def tick(self, done: int, total: int, desc: str | None) -> None:
        """on_batch for loops that reuse cached batches (ACDC's mask evaluations)."""
        if self.on_batch is not None:
            self.on_batch(done, total, desc)

    # the reference runs (engine/context.py), as methods of the setup
    def reference(self, batch: Batch) -> Activations:
        """What an out-of-circuit edge carries: the corrupted run's outputs, zeros, or their mean."""
        return self.runs.reference(batch)

    def corrupted_run(self, batch: Batch):
        return self.runs.corrupted_run(batch)

    def clean_run(self, batch: Batch, record_resid: bool = False):
        return self.runs.clean_run(batch, record_resid)

    def keep_run(self, batch: Batch, kind: str, result) -> None:
        """Offer a batch's recorded run to its RunCache (ReferenceRuns.keep_run)."""
        self.runs.keep_run(batch, kind, result)

    def run_cache(self, batch: Batch) -> RunCache:
        """The batch's RunCache, kept within run_cache_bytes (ReferenceRuns.run_cache)."""
        return self.runs.run_cache(batch)


# a forward's positional masks (K masks, repeated per example) are kept under this many bytes by
# splitting the K masks over several forwards
POSITIONAL_MASK_BYTES = 256 * 2**20


@torch.no_grad()
def masked_metric_values(setup: Setup, batch: Batch, ref: Activations, off: torch.Tensor,
                         clean_logits=None) -> torch.Tensor:
    """The metric of each of the batch's examples under each of K edge masks off [K, n_sources, n_readers],
    all K evaluated in one forward pass (examples repeated per mask). Returns float64 [K, batch]."""
    b, k = len(batch.rows), off.shape[0]
    per_row = off[0].numel() * off.element_size()
    if k > 1 and k * b * per_row > POSITIONAL_MASK_BYTES and off.dim() == 5:  # positional masks: P^2 bigger
        step = max(1, POSITIONAL_MASK_BYTES // (b * per_row))
        return torch.cat([masked_metric_values(setup, batch, ref, off[i:i + step], clean_logits)
                          for i in range(0, k, step)])
    rep = lambda t: t.repeat(k, *([1] * (t.dim() - 1))) if t.shape[0] == b else t  # broadcast refs stay
    result = run(setup.adapter, setup.graph, batch.clean.repeat(k, 1), last=batch.clean_last.repeat(k),
                 ref=ref.map(rep), off=off.to(setup.device).repeat_interleave(b, 0))
    return torch.stack([setup.metric(result.logits[i * b:(i + 1) * b], batch, clean_logits).double()
                        for i in range(k)])


def masked_metric_sums(setup: Setup, batch: Batch, ref: Activations, off: torch.Tensor, clean_logits=None) -> torch.Tensor:
    """masked_metric_values summed over the batch's examples: float64 [K]."""
    return masked_metric_values(setup, batch, ref, off, clean_logits).sum(1)


def reference_residuals(setup: Setup, clean: Activations, delta: Activations) -> list[torch.Tensor]:
    """Residual at each stage when every upstream source carries its reference value:
    clean residual + sum over upstream sources of (reference - clean)."""
    graph, out = setup.graph, []
    for stage, resid in zip(graph.stages, clean.resid):
        r = resid + delta.embed
        for up in graph.upstream(stage):
            r = r + head_writes(setup.adapter, up.layer, delta.z[up.layer]).sum(2)
            if up.mlp is not None:
                r = r + delta.mlp[up.layer]
        out.append(r)
    return out


def edge_score_hook(setup: Setup, delta: Activations, scores: torch.Tensor, weight: float = 1.0):
    """Backward hook adding, for every edge into the readers it is given, weight * sum_{n,p}
    delta_source . grad_reader.

    delta = reference - clean per source, so the product estimates the metric change when the edge is
    switched to its reference value. The gradient is laid out once per call as [(n p d), readers] so
    each upstream layer costs one matmul; head deltas stay in d_head until their layer is reached,
    and a layer's writes are kept for later stages only within setup.write_cache_bytes.
    Accumulated in fp32 whatever the model dtype."""
    graph, adapter = setup.graph, setup.adapter
    if graph.n_positions is not None:
        from ..engine.positions import positional_score_hook
        return positional_score_hook(setup, delta, scores, weight)
    cache, cached_bytes = {}, [0]

    def head_writes_flat(layer, n, p, d):
        if layer in cache:
            return cache[layer]
        w_out = adapter.heads(layer).out.float()
        writes = torch.einsum("nphk,hkm->hnpm", delta.z[layer].float().expand(n, p, -1, -1), w_out)
        writes = writes.reshape(graph.n_heads, n * p * d)
        if cached_bytes[0] + writes.numel() * 4 <= setup.write_cache_bytes:
            cache[layer] = writes
            cached_bytes[0] += writes.numel() * 4
        return writes

    def hook(stage, first, grad):
        n, p, r, d = grad.shape
        g = grad.float().permute(0, 1, 3, 2).reshape(n * p * d, r)
        block = scores[:stage.n_upstream, stage.start + first:stage.start + first + r]
        flat = lambda t: t.float().expand(n, p, d).reshape(1, -1)
        block[0] += weight * (flat(delta.embed) @ g)[0]
        for up in graph.upstream(stage):
            block[up.heads] += weight * (head_writes_flat(up.layer, n, p, d) @ g)
            if up.mlp is not None:
                block[up.mlp] += weight * (flat(delta.mlp[up.layer]) @ g)[0]

    return hook


def to_edge_scores(setup: Setup, matrix: torch.Tensor, n_examples: int) -> torch.Tensor:
    """[n_sources, n_readers] sums -> per-edge mean over examples, in the graph's edge order."""
    coords = tuple(torch.as_tensor(c, device=matrix.device) for c in setup.graph.edge_coords())
    return (matrix[coords] / n_examples).cpu()


def new_score_matrix(setup: Setup) -> torch.Tensor:
    """[n_sources, n_readers] (positional graphs: [n_sources, n_readers, P, P]) fp32 zeros."""
    return torch.zeros(setup.graph.valid.shape, dtype=torch.float32, device=setup.device)


def new_neuron_matrix(setup: Setup) -> torch.Tensor:
    return torch.zeros(setup.graph.n_sources, setup.adapter.d_model, dtype=torch.float32, device=setup.device)


def neuron_score_hook(setup: Setup, delta: Activations, scores: torch.Tensor, weight: float = 1.0):
    """Backward hook (the edge methods' grad_hook signature) adding, for every source upstream of the
    readers it is given, weight * sum_{n,p} delta_source * (sum of those readers' gradients), per
    output dimension. fp32 whatever the model dtype."""
    graph, adapter = setup.graph, setup.adapter
    cache, cached_bytes = {}, [0]

    def writes_of(layer):  # delta is fixed for the batch: a layer's writes are kept within the budget
        if layer in cache:
            return cache[layer]
        writes = head_writes(adapter, layer, delta.z[layer].float()).float()
        if cached_bytes[0] + writes.numel() * 4 <= setup.write_cache_bytes:
            cache[layer] = writes
            cached_bytes[0] += writes.numel() * 4
        return writes

    def hook(stage, first, grad):
        g = grad.float().sum(2)  # [N, P, d]: the gradient these readers send back to every upstream source
        scores[0] += weight * torch.einsum("npm,npm->m", delta.embed.float().expand_as(g), g)
        for up in graph.upstream(stage):
            writes = writes_of(up.layer)
            scores[up.heads] += weight * torch.einsum("nphm,npm->hm", writes.expand(*g.shape[:2], -1, -1), g)
            if up.mlp is not None:
                scores[up.mlp] += weight * torch.einsum("npm,npm->m", delta.mlp[up.layer].float().expand_as(g), g)

    return hook
