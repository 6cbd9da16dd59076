"""What every method shares: the model, graph, task, metric and the reference activations."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Callable

import torch
from tqdm.auto import tqdm

from ..core.errors import UserError
from ..core.graph import Graph
from ..model.metrics import Metric, resolve_metric
from ..model.adapters import LoadedModel
from ..core.names import INTERVENTIONS  # noqa: F401 (re-exported)
from ..engine.patching import Activations, RunCache, head_writes, run, source_rows
from ..task_library import as_task
from ..model.tasks import Batch, Task, check_equal_lengths, divergence_order, iter_batches


@dataclass
class Setup:
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
    _mean: Activations | None = field(default=None, init=False, repr=False)
    _runs: dict = field(default_factory=dict, init=False, repr=False)
    # each evaluated circuit's metric per example, by its edge set (and what else determines it), so
    # that the target search, the chosen circuit and the curve evaluate a circuit once (evaluation.py)
    _values: dict = field(default_factory=dict, init=False, repr=False)

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
        self._runs_left, self._stack_budget = [self.run_cache_bytes], [self.write_cache_bytes]  # bytes left
        self._order = None  # rows in batches: tasks.divergence_order
        self._recorded: dict[tuple, dict] = {}  # batch runs kept for its RunCache (see run_cache)

    @property
    def adapter(self):
        return self.model.adapter

    @property
    def device(self):
        return self.adapter.device

    def batches(self, desc: str | None = None):
        if self._order is None:
            self._order = divergence_order(self.task)
        it = iter_batches(self.task, self.batch_size, device=self.device, order=self._order)
        total = -(-len(self.task) // self.batch_size)
        bar = tqdm(it, total=total, desc=desc, file=sys.stderr, disable=not self.progress or desc is None,
                   leave=False)
        return bar if self.on_batch is None else self._watched(bar, total, desc)

    def _watched(self, batches, total: int, desc: str | None):
        for done, batch in enumerate(batches):
            self.on_batch(done, total, desc)
            yield batch
        self.on_batch(total, total, desc)

    def tick(self, done: int, total: int, desc: str | None) -> None:
        """on_batch for loops that reuse cached batches (ACDC's mask evaluations)."""
        if self.on_batch is not None:
            self.on_batch(done, total, desc)

    @torch.no_grad()
    def reference(self, batch: Batch) -> Activations:
        """What an out-of-circuit edge carries: the corrupted run's outputs, zeros, or their mean."""
        if self.intervention == "patching":
            return self.corrupted_run(batch).acts
        if self.intervention == "mean":
            return self._mean_activations()
        a, d = self.adapter, self.adapter.d_model
        zeros = torch.zeros(1, 1, d, dtype=a.dtype, device=self.device)
        return Activations(zeros, [torch.zeros(1, 1, a.n_heads, a.d_head, dtype=a.dtype, device=self.device)] * a.n_layers,
                           [zeros] * a.n_layers)

    def _mean_activations(self) -> Activations:
        """Each source's output averaged over every real token of the corrupted prompts."""
        if self._mean is None:
            total, count = None, 0
            for batch in iter_batches(self.task, self.batch_size, device=self.device):
                acts = run(self.adapter, self.graph, batch.corrupted, last=batch.corrupted_last, record=True).acts
                pos = torch.arange(batch.corrupted.shape[1], device=self.device)
                real = (pos[None] <= batch.corrupted_last[:, None]).to(torch.float32)
                summed = acts.map(lambda t: torch.einsum("np,np...->...", real, t.float())[None, None])
                total = summed if total is None else Activations(
                    total.embed + summed.embed, [x + y for x, y in zip(total.z, summed.z)],
                    [x + y for x, y in zip(total.mlp, summed.mlp)])
                count += int(real.sum())
            self._mean = total.map(lambda t: (t / count).to(self.adapter.dtype))
        return self._mean

    @torch.no_grad()
    def corrupted_run(self, batch: Batch):
        kept = self._recorded.get(tuple(batch.rows), {}).get("corrupted")
        if kept is not None:
            return kept
        result = run(self.adapter, self.graph, batch.corrupted, last=batch.corrupted_last, record=True)
        if self.intervention == "patching" and self.graph.n_positions is None:
            self.keep_run(batch, "corrupted", result)
        return result

    def keep_run(self, batch: Batch, kind: str, result) -> None:
        """Keep a batch's recorded run ("corrupted", or "clean" with its residuals) for the batch's
        RunCache, which then need not run it again (within run_cache_bytes; a scoring pass offers its
        runs, the first evaluation takes them)."""
        key = tuple(batch.rows)
        if key in self._runs or kind in self._recorded.get(key, {}):
            return
        size = _acts_bytes(result.acts)
        if size <= self._runs_left[0]:
            self._runs_left[0] -= size
            self._recorded.setdefault(key, {})[kind] = result

    def run_cache(self, batch: Batch) -> RunCache:
        """The batch's RunCache over the clean model (its clean run, reference and, with patching, the
        corrupted run's logits: the empty circuit's), kept for later evaluations within
        run_cache_bytes."""
        key = tuple(batch.rows)
        if key in self._runs:
            return self._runs[key]
        patching = self.intervention == "patching"
        if patching:
            corrupted = self.corrupted_run(batch)
            ref, ref_logits = corrupted.acts, corrupted.logits
        else:
            ref, ref_logits = self.reference(batch), None
        kept = self._recorded.pop(key, {})
        self._runs_left[0] += sum(_acts_bytes(r.acts) for r in kept.values())
        budget = [self._stack_budget[0]]  # what is left of the shared budget, taken only if kept
        cache = RunCache(self.adapter, self.graph, batch.clean, batch.clean_last, ref, ref_is_run=patching,
                         budget=budget, ref_logits=ref_logits, clean=kept.get("clean"))
        size = cache.nbytes()
        if size <= self._runs_left[0]:
            self._runs_left[0] -= size
            self._stack_budget[0] = budget[0]
            cache.budget = self._stack_budget
            self._runs[key] = cache
        return cache

    @torch.no_grad()
    def clean_run(self, batch: Batch, record_resid: bool = False):
        return run(self.adapter, self.graph, batch.clean, last=batch.clean_last, record=True,
                   record_resid=record_resid)


def _acts_bytes(acts) -> int:
    ts = [acts.embed, *acts.z, *acts.mlp, *acts.resid]
    return sum(t.untyped_storage().nbytes() for t in ts if t is not None)


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
        for layer in range(graph.n_layers):
            h0, h1 = source_rows(graph, layer)
            if h0 >= stage.n_upstream:
                break
            r = r + head_writes(setup.adapter, layer, delta.z[layer]).sum(2)
            if h1 < stage.n_upstream:
                r = r + delta.mlp[layer]
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
        return positional_score_hook(setup, delta, scores, weight, head_writes, source_rows)
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
        for layer in range(graph.n_layers):
            h0, h1 = source_rows(graph, layer)
            if h0 >= stage.n_upstream:
                break
            block[h0:h1] += weight * (head_writes_flat(layer, n, p, d) @ g)
            if h1 < stage.n_upstream:
                block[h1] += weight * (flat(delta.mlp[layer]) @ g)[0]

    return hook


def to_edge_scores(setup: Setup, matrix: torch.Tensor, n_examples: int) -> torch.Tensor:
    """[n_sources, n_readers] sums -> per-edge mean over examples, in the graph's edge order."""
    coords = tuple(torch.as_tensor(c, device=matrix.device) for c in setup.graph.edge_coords())
    return (matrix[coords] / n_examples).cpu()


def new_score_matrix(setup: Setup) -> torch.Tensor:
    """[n_sources, n_readers] (positional graphs: [n_sources, n_readers, P, P]) fp32 zeros."""
    return torch.zeros(setup.graph.valid.shape, dtype=torch.float32, device=setup.device)
