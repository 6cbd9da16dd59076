"""The run context's reference runs: what an out-of-circuit edge carries on each data batch, and the
runs that evaluations and scoring passes on one setup share, within explicit memory budgets.

- reference(batch): the corrupted run's source outputs (patching), zeros (zero ablation), or their
  mean over every real token of the corrupted prompts (mean ablation).
- run_cache(batch): the batch's RunCache over the clean model (engine/cached.py), kept for later
  evaluations while the caches fit in `runs` (MemoryBudget of run_cache_bytes); the stacked writes
  inside them share `writes` (write_cache_bytes).
- keep_run(batch, kind, result): a scoring pass offers its recorded clean (with residuals) or
  corrupted run to the batch's RunCache, within `runs`; the first run_cache(batch) takes it.

The configuration these depend on (model, graph, task, batch size, intervention) is fixed when the
context is made (Setup, discovery/methods/common.py, holds one)."""

from __future__ import annotations

import torch

from ..core.graph import Graph
from ..model.tasks import Batch, Task, iter_batches
from .cached import RunCache
from .patching import Activations, RunResult, run


class MemoryBudget:
    """Bytes left of a budget shared by several holders: take(n) when it fits, give(n) back."""

    def __init__(self, nbytes: int):
        self.left = int(nbytes)

    def take(self, n: int) -> bool:
        if n > self.left:
            return False
        self.left -= n
        return True

    def give(self, n: int) -> None:
        self.left += n

    def __repr__(self) -> str:
        return f"MemoryBudget({self.left} bytes left)"


def acts_bytes(acts: Activations) -> int:
    ts = [acts.embed, *acts.z, *acts.mlp, *acts.resid]
    return sum(t.untyped_storage().nbytes() for t in ts if t is not None)


class ReferenceRuns:
    """The reference and recorded runs of one setup (module docstring). runs: the budget of kept runs
    and RunCaches (run_cache_bytes); writes: the budget of the caches' stacked writes and memo
    (write_cache_bytes)."""

    def __init__(self, adapter, graph: Graph, task: Task, batch_size: int, intervention: str, *,
                 run_cache_bytes: int, write_cache_bytes: int):
        self.adapter, self.graph, self.task = adapter, graph, task
        self.batch_size, self.intervention = batch_size, intervention
        self.runs, self.writes = MemoryBudget(run_cache_bytes), MemoryBudget(write_cache_bytes)
        self.mean: Activations | None = None  # mean ablation's reference, once computed (or given by a worker)
        self._caches: dict[tuple, RunCache] = {}
        self._recorded: dict[tuple, dict] = {}  # batch runs kept for its RunCache (see keep_run)

    @property
    def device(self):
        return self.adapter.device

    @torch.no_grad()
    def reference(self, batch: Batch) -> Activations:
        """What an out-of-circuit edge carries: the corrupted run's outputs, zeros, or their mean."""
        if self.intervention == "patching":
            return self.corrupted_run(batch).acts
        if self.intervention == "mean":
            return self.mean_activations()
        a, d = self.adapter, self.adapter.d_model
        zeros = torch.zeros(1, 1, d, dtype=a.dtype, device=self.device)
        return Activations(zeros, [torch.zeros(1, 1, a.n_heads, a.d_head, dtype=a.dtype, device=self.device)] * a.n_layers,
                           [zeros] * a.n_layers)

    def mean_activations(self) -> Activations:
        """Each source's output averaged over every real token of the corrupted prompts."""
        if self.mean is None:
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
            self.mean = total.map(lambda t: (t / count).to(self.adapter.dtype))
        return self.mean

    @torch.no_grad()
    def corrupted_run(self, batch: Batch) -> RunResult:
        kept = self._recorded.get(tuple(batch.rows), {}).get("corrupted")
        if kept is not None:
            return kept
        result = run(self.adapter, self.graph, batch.corrupted, last=batch.corrupted_last, record=True)
        if self.intervention == "patching" and self.graph.n_positions is None:
            self.keep_run(batch, "corrupted", result)
        return result

    @torch.no_grad()
    def clean_run(self, batch: Batch, record_resid: bool = False) -> RunResult:
        return run(self.adapter, self.graph, batch.clean, last=batch.clean_last, record=True,
                   record_resid=record_resid)

    def keep_run(self, batch: Batch, kind: str, result: RunResult) -> None:
        """Keep a batch's recorded run ("corrupted", or "clean" with its residuals) for the batch's
        RunCache, which then need not run it again (within the runs budget; a scoring pass offers its
        runs, the first evaluation takes them)."""
        key = tuple(batch.rows)
        if key in self._caches or kind in self._recorded.get(key, {}):
            return
        if self.runs.take(acts_bytes(result.acts)):
            self._recorded.setdefault(key, {})[kind] = result

    def caches(self) -> list[RunCache]:
        """The RunCaches kept so far (one per batch, within the runs budget)."""
        return list(self._caches.values())

    def n_kept_runs(self) -> int:
        """Scoring runs kept (keep_run) that no RunCache has taken yet."""
        return sum(len(kinds) for kinds in self._recorded.values())

    def run_cache(self, batch: Batch) -> RunCache:
        """The batch's RunCache over the clean model (its clean run, reference and, with patching, the
        corrupted run's logits: the empty circuit's), kept for later evaluations within the runs budget."""
        key = tuple(batch.rows)
        if key in self._caches:
            return self._caches[key]
        patching = self.intervention == "patching"
        if patching:
            corrupted = self.corrupted_run(batch)
            ref, ref_logits = corrupted.acts, corrupted.logits
        else:
            ref, ref_logits = self.reference(batch), None
        kept = self._recorded.pop(key, {})
        self.runs.give(sum(acts_bytes(r.acts) for r in kept.values()))
        trial = MemoryBudget(self.writes.left)  # what is left of the shared budget, taken only if kept
        cache = RunCache(self.adapter, self.graph, batch.clean, batch.clean_last, ref, ref_is_run=patching,
                         budget=trial, ref_logits=ref_logits, clean=kept.get("clean"))
        if self.runs.take(cache.nbytes()):
            self.writes.left = trial.left
            cache.budget = self.writes
            self._caches[key] = cache
        return cache
