"""ACDC (Conmy et al. 2023): prune edges one at a time from the full graph, from the logits backwards,
removing every edge whose removal moves the metric by at most tau. Fast and exact: the result is the
same edge set as the plain one-forward-per-edge procedure below (tests/acdc_reference.py).

Definition (what both implementations compute)
----------------------------------------------
- Start: the circuit C holds every edge, or, with `candidates`, every candidate edge (the others are
  removed up front and never decided). m(C) is the task metric of the circuit: the per-example metric
  (`Setup.metric`, read at each row's last token) averaged over the task's rows, with out-of-circuit
  edges carrying the setup's reference (the corrupted run's source outputs by default; zero and mean
  ablation work too). Sums are fp32 per example, accumulated in float64.
- Order: edges are visited in the reverse of the graph's edge order. The graph orders edges by reader
  slot in forward order, then by source, so this visits the destinations (reader slots: logits, then
  m{L-1}, then a{L-1}'s v, k and q slots, highest head first, ..., down to layer 0) in reverse
  topological order, and each destination's incoming edges from the latest source to `input`.
- Decision for edge e: score(e) = m(C without e) - m(C), the raw metric change (the same sign
  convention as `exact`). The loss of behaviour is hurt(e) = score for lower-is-better metrics (KL:
  distance from the clean model) and -score for higher-is-better ones (logit_diff, prob_diff); with
  `absolute=True` it is |score|. e is removed iff hurt(e) <= tau, and removals accumulate: C loses e
  and m(C) becomes m(C without e) for the next decision.
  Why the signed hurt: it is Conmy et al.'s rule for KL, and for logit_diff it removes an edge whose
  removal *raises* the behaviour (it worked against it), as KL's rule removes an edge whose removal
  brings the output closer to clean. |score| (absolute=True) instead keeps such opposing edges.
  Why <= and not <: tau = 0 then keeps exactly the edges whose removal hurts at all, and removes
  edges that change nothing (see the next point).
- Dead destinations: a reader slot with no path to the logits in the current circuit (its node's
  outputs are all removed, or lead only to such nodes) cannot influence the output, so removing an
  edge into it changes the metric by exactly 0. Such edges are removed with score 0 and no forward
  pass. (A forward would measure float noise of ~1e-7 instead of 0.) Since destinations are visited
  from the logits backwards, every edge out of the destination's node is final when it is reached.
- scores: score(e) for every decided edge (0 for dead destinations), NaN for edges outside
  `candidates`.

Ties: the fast and the plain implementation evaluate the same masks in different forward passes
(batched, started mid-model, unchanged parts skipped), so a metric may differ in its last float bits
(~1e-7 here). A decision whose hurt lies that close to tau can go either way; the tests use
thresholds whose every decision is at least 1e-5 from tau. Exact equality is for fp32 models (bf16
models run, but the two round differently).

How it is fast (tests/acdc_reference.py is the one-forward-per-edge baseline)
---------------------------------------------------------------------------
- Everything upstream of the destination is still the starting circuit: the visit goes from the
  logits backwards, so every removal so far is downstream of (or at the stage of) the current
  destination. So each mask is evaluated by the patching core's cached run (`patching.run` with a
  `RunCache`: one recorded forward of the starting circuit per data batch, the clean run when every
  edge is a candidate), started at the destination's stage; the cached run also skips what the
  logits cannot depend on and reruns only what the masks change (see `engine/cached.py`: run_cached).
- Many candidate removals share one forward (a batch of edge masks). The decisions are sequential,
  so the batch is speculative: a chain of the next edges in visiting order, each mask assuming a
  prediction for the undecided edges before it in the chain (the last decision on an edge from the
  same source, else the last decision). Decisions are taken in order while they match the
  prediction; the first that does not is still valid (its own mask assumed the right past) and ends
  the chain; the rest is discarded. Chains are as long as a rough cost model says pays off (a mask
  that starts early costs nearly a whole forward; one into the logits costs almost nothing). Dead
  destinations inside a chain are decided without a mask.
- Several tau values share the caches, and runs still in the same state (position and circuit)
  share their chains; the masks of all runs in a round are merged by starting stage.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
from ..core.progress import progress as progress_bar

from ..core import registry
from ..core.errors import UserError
from ..engine.cached import RunCache, alive_nodes
from ..engine.context import MemoryBudget
from ..engine.patching import run
from .common import Setup

DEFAULT_TAU = registry.method("acdc").defaults["tau"]
# The fixed cost of one forward call (many small operations), in multiply-adds of the model's work;
# only steers how long speculative chains are, never what is decided.
FORWARD_OVERHEAD = {"cpu": 2e7, "cuda": 2e10}


@dataclass
class ACDCResult:
    tau: float
    in_circuit: np.ndarray  # bool [n_edges], graph edge order
    scores: np.ndarray  # float32 [n_edges]: m(C without e) - m(C) when e was decided; NaN if never
    n_forward_passes: int  # forwards of the call (one data batch each), shared by all taus of a call
    n_edges_evaluated: int  # edges decided by a measured metric (not counting dead destinations)
    wall_time_s: float  # of the whole call
    n_edges_dead: int = 0  # edges into destinations with no path to the logits: removed, score 0
    n_masks_evaluated: int = 0  # masks evaluated in the call, including discarded speculation


def check_tau(tau) -> float:
    try:
        t = float(tau)
    except (TypeError, ValueError):
        raise UserError(f"ACDC threshold tau must be a non-negative number (got {tau!r})") from None
    if isinstance(tau, bool) or math.isnan(t) or t < 0:
        raise UserError(f"ACDC threshold tau must be a non-negative number (got {tau!r})")
    return t


def check_candidates(setup: Setup, candidates) -> np.ndarray:
    n = setup.graph.n_edges
    if candidates is None:
        return np.ones(n, dtype=bool)
    c = np.asarray(candidates)
    if c.shape != (n,) or c.dtype != bool:
        raise UserError(f"ACDC candidates must be a boolean array with one entry per edge ({n}); "
                        f"got dtype {c.dtype} and shape {c.shape}")
    return c.copy()


class _TauRun:
    """The state of one tau: the circuit so far, its metric, the next edge to decide, and what the
    speculation has learned (each source's last decision, how often predictions were right)."""

    def __init__(self, tau: float, keep: np.ndarray, m0: float, n_edges: int, n_sources: int):
        self.tau, self.keep, self.m_cur = tau, keep.copy(), m0
        self.pos = 0
        self.scores = np.full(n_edges, np.nan)
        self.n_measured = self.n_dead = 0
        # prediction of a decision: the last measured decision on an edge from the same source, else
        # the last measured decision of all
        self.src_removed = np.full(n_sources, -1, dtype=np.int8)
        self.last_removed = True
        self.hits, self.misses = 0, 0  # how often that prediction was right

    def key(self):
        return self.pos, self.keep.tobytes()

    @property
    def accuracy(self) -> float:
        return (self.hits + 1) / (self.hits + self.misses + 2)


class MaskEvaluator:
    """The metric sums of edge masks over one set of rows: the data batches' caches, and evaluate().

    The whole task in a single process; one shard of its rows in a Ray worker (discovery.pipeline.distributed).
    Sums, not means, so that the driver can add the shards' sums (float64) and divide by the task's
    row count: the decisions then need not know where the rows live."""

    def __init__(self, setup: Setup, candidates: np.ndarray):
        self.setup, self.graph = setup, setup.graph
        self.valid = self.graph.valid
        budget = MemoryBudget(setup.write_cache_bytes)
        off0 = None if bool(candidates.all()) else torch.as_tensor(self.off_matrix(candidates), dtype=torch.float32)
        patching = setup.intervention == "patching"
        self.caches = []
        for batch in setup.batches():
            c = RunCache(setup.adapter, self.graph, batch.clean, batch.clean_last, setup.reference(batch),
                         ref_is_run=patching, budget=budget, off0=off0)
            c.batch = batch
            self.caches.append(c)
        self.n_forwards = sum(c.n_forwards + patching for c in self.caches)  # + the reference run
        total = 0.0
        for c in self.caches:
            total += float(setup.metric(c.base_logits, c.batch, c.clean_logits).double().sum())
        self.base_sum = total

    def stats(self) -> dict:
        """What the driver needs to know of these rows: counts and shapes (for the cost model), and
        the metric sum of the starting circuit."""
        return {"rows": sum(len(c.batch.rows) for c in self.caches),
                "rows_per_batch": max(len(c.batch.rows) for c in self.caches),
                "lengths": [(int(c.ids.shape[1]), int(c.ids.shape[1] - c.p0)) for c in self.caches],
                "vocab": int(self.caches[0].clean_logits.shape[-1]), "device": self.setup.device.type,
                "base_sum": self.base_sum, "n_forwards": self.n_forwards}

    def off_matrix(self, keep: np.ndarray) -> np.ndarray:
        return self.valid & ~self.graph.edge_mask_matrix(keep)

    def sums(self, groups: list[tuple[int, np.ndarray]], cap: int) -> list[np.ndarray]:
        """groups: (start stage, distinct masks [K, n_edges] bool that start there). Returns, per group,
        the metric summed over these rows under each mask (float64 [K]); one forward per data batch
        and chunk of at most `cap` masks."""
        out = []
        for start, masks in groups:
            totals = np.zeros(len(masks))
            for lo in range(0, len(masks), cap):
                chunk = masks[lo:lo + cap]
                off = torch.as_tensor(np.stack([self.off_matrix(m) for m in chunk]), dtype=torch.float32,
                                      device=self.setup.device)
                for c in self.caches:
                    logits = run(self.setup.adapter, self.graph, c.ids, cache=c, start_stage=start, off=off).logits
                    b = len(c.batch.rows)
                    sums = torch.stack([self.setup.metric(logits[i * b:(i + 1) * b], c.batch, c.clean_logits)
                                        .double().sum() for i in range(len(chunk))])
                    totals[lo:lo + len(chunk)] += sums.cpu().numpy()
                    self.n_forwards += 1
            out.append(totals)
        return out


class LocalShards:
    """All rows in this process: one MaskEvaluator. (discovery.pipeline.distributed.RemoteShards has the same
    interface over Ray workers.)"""

    def __init__(self, setup: Setup, candidates: np.ndarray):
        self.setup, self.candidates = setup, candidates
        self.evaluator = None

    def open(self) -> list[dict]:
        self.evaluator = MaskEvaluator(self.setup, self.candidates)
        return [self.evaluator.stats()]

    def sums(self, groups, cap: int) -> np.ndarray:
        return self.evaluator.sums(groups, cap)

    @property
    def n_forwards(self) -> int:
        return self.evaluator.n_forwards

    def close(self):
        pass  # the caches go with this object


def cost_model(graph, d_model: int, stats: list[dict]):
    """Rough costs, in multiply-adds, for choosing chain lengths (never for results): per mask
    started at each stage (its rows through the remaining stages), and per forward pass (the fixed
    cost of a call: its many small operations and Python; much higher on a GPU). Shards run side by
    side, so the largest shard's rows and forwards are what a round waits for."""
    d = d_model
    p = np.mean([length for s in stats for length, _ in s["lengths"]])
    pc = np.mean([computed for s in stats for _, computed in s["lengths"]])
    vocab = stats[0]["vocab"]
    work = []
    for st in graph.stages:
        final = st.layer == graph.n_layers - 1
        if st.kind == "attn":
            work.append(pc * 2 * d * d + (2 * d * d if final else pc * (2 * d * d + 2 * p * d)))
        elif st.kind == "mlp":
            work.append((1 if final else pc) * 8 * d * d)
        else:
            work.append(d * vocab)
    per_mask = np.cumsum(work[::-1])[::-1] * max(s["rows"] for s in stats)
    per_forward = max(FORWARD_OVERHEAD.get(s["device"], FORWARD_OVERHEAD["cpu"]) * len(s["lengths"]) for s in stats)
    return per_mask, per_forward


class _ACDC:
    """The decisions (propose chains, consume their results); the masks are evaluated by `shards`
    (LocalShards, or RemoteShards over Ray workers), which return metric sums over their rows."""

    def __init__(self, setup: Setup, candidates: np.ndarray, absolute: bool, max_rows: int, shards):
        self.setup, self.graph = setup, setup.graph
        g = self.graph
        self.candidates, self.absolute = candidates, absolute
        self.order = np.flatnonzero(candidates)[::-1]
        self.readers_of = g.readers_of
        self.stage_of_reader = np.zeros(g.n_readers, dtype=np.int64)
        for i, st in enumerate(g.stages):
            self.stage_of_reader[st.start:st.stop] = i
        self.n_masks = 0
        self.shards = shards
        stats = shards.open()
        self.n_examples = sum(s["rows"] for s in stats)
        self.rows_per_batch = max(s["rows_per_batch"] for s in stats)
        self.cap = max(1, max_rows // self.rows_per_batch)
        self.max_chain = 1 if self.cap == 1 else 4 * self.cap  # max_rows = one batch: no speculation
        self.mask_cost, self.forward_cost = cost_model(g, setup.adapter.d_model, stats)
        self.m0 = sum(s["base_sum"] for s in stats) / self.n_examples

    @property
    def n_forwards(self) -> int:
        return self.shards.n_forwards

    def hurt(self, score: float) -> float:
        if self.absolute:
            return abs(score)
        return -score if self.setup.metric.higher_is_better else score

    # --- speculation -----------------------------------------------------------------------------
    def worth_adding(self, i: int, stage: int, stages: set, accuracy: float) -> bool:
        """Whether to add a chain's i-th measured mask (0-based), which starts at `stage`: it is used
        only if the i predictions before it are right (probability accuracy ** i), and then saves a
        later forward of its own; it costs its rows now, and a forward's fixed cost if no mask of the
        chain starts at that stage yet."""
        if i == 0:
            return True
        rows = self.mask_cost[stage]
        return accuracy ** i * (self.forward_cost + rows) > rows + (0 if stage in stages else self.forward_cost)

    def propose(self, state: _TauRun):
        """The next chain [(edge, predicted removal, mask)]: each mask removes its edge from the circuit
        in which the chain's earlier edges are decided as predicted. mask is None for an edge into a
        dead destination (removed without a measurement)."""
        g, keep = self.graph, state.keep.copy()
        src_removed, last = state.src_removed.copy(), state.last_removed
        chain, n_meas, pos, reader, dead = [], 0, state.pos, -1, False
        stages, accuracy = set(), state.accuracy
        while pos < len(self.order):
            e = self.order[pos]
            r, s = g.edge_dst[e], g.edge_src[e]
            if r != reader:
                reader = r
                dead = not alive_nodes(g, g.edge_mask_matrix(keep), self.readers_of)[0][r]
            if dead:
                keep[e] = False
                chain.append((e, True, None))
            else:
                stage = int(self.stage_of_reader[r])
                if n_meas == self.max_chain or not self.worth_adding(n_meas, stage, stages, accuracy):
                    break
                stages.add(stage)
                trial = keep.copy()
                trial[e] = False
                predict = bool(src_removed[s]) if src_removed[s] >= 0 else last
                chain.append((e, predict, trial))
                n_meas += 1
                src_removed[s], last = predict, predict
                if predict:
                    keep = trial
            pos += 1
        return chain

    def consume(self, state: _TauRun, chain, values: dict) -> int:
        """Take the chain's decisions while they match the predictions, and the first that does not
        (its own mask assumed the right past)."""
        done = 0
        for e, predict, trial in chain:
            state.pos += 1
            done += 1
            if trial is None:
                state.keep[e] = False
                state.scores[e] = 0.0
                state.n_dead += 1
                continue
            m = values[trial.tobytes()]
            score = m - state.m_cur
            state.scores[e] = score
            state.n_measured += 1
            remove = self.hurt(score) <= state.tau
            if remove:
                state.keep[e] = False
                state.m_cur = m
            state.src_removed[self.graph.edge_src[e]] = remove
            state.last_removed = remove
            if remove != predict:
                state.misses += 1
                break
            state.hits += 1
        return done

    # --- evaluation ------------------------------------------------------------------------------
    def evaluate(self, by_start: dict[int, list[np.ndarray]]) -> dict:
        """Mean metric of each mask, keyed by the mask's bytes: the shards' sums added (float64) and
        divided by the task's row count."""
        groups = []
        for start, masks in sorted(by_start.items()):
            groups.append((start, np.stack(list({m.tobytes(): m for m in masks}.values()))))
        values = {}
        for (_, masks), totals in zip(groups, self.shards.sums(groups, self.cap)):
            self.n_masks += len(masks)
            for m, t in zip(masks, totals / self.n_examples):
                values[m.tobytes()] = float(t)
        return values

    def run(self, taus: list[float], progress: bool) -> list[_TauRun]:
        states = [_TauRun(t, self.candidates, self.m0, self.graph.n_edges, self.graph.n_sources) for t in taus]
        n = len(self.order)
        bar = progress_bar(total=n * len(states), desc="acdc", file=sys.stderr, disable=not progress, leave=False)
        while True:
            active = [s for s in states if s.pos < n]
            if not active:
                break
            groups: dict = {}
            for s in active:
                groups.setdefault(s.key(), []).append(s)
            chains, by_start = [], {}
            for members in groups.values():
                chain = self.propose(members[0])
                chains.append((members, chain))
                for e, _, trial in chain:  # each mask starts at its own destination's stage
                    if trial is not None:
                        by_start.setdefault(int(self.stage_of_reader[self.graph.edge_dst[e]]), []).append(trial)
            values = self.evaluate(by_start) if by_start else {}
            for members, chain in chains:
                for s in members:
                    bar.update(self.consume(s, chain, values))
            self.setup.tick(sum(min(s.pos, n) for s in states), n * len(states), "acdc")  # progress, cancel
        bar.close()
        return states


def acdc(setup: Setup, tau: float = DEFAULT_TAU, taus=None, candidates=None, progress: bool | None = None,
         absolute: bool = False, max_rows: int = 512, workers=None):
    """ACDC pruning (see the module docstring for the exact definition).

    tau: threshold on the loss of behaviour; taus (overrides tau): several thresholds in one call
    (returns a list of results in the same order; caches and identical prefixes are shared, and every result reports the
    forward passes and wall time of the whole call). candidates: optional bool [n_edges]; edges outside
    it are removed up front and never decided. absolute: decide on |score| instead of the signed loss.
    max_rows: rows (masks x examples of a data batch) per forward pass; at most one batch's rows turns
    speculation off (one mask, one measured edge per forward). progress: default
    setup.progress. workers: a discovery.pipeline.distributed.Workers to shard the rows over (each round's
    masks are evaluated by every shard; the decisions stay here). Returns an ACDCResult (a list of
    them when taus is given)."""
    t0 = time.perf_counter()
    single = taus is None
    if single:
        tau_list = [check_tau(tau)]
    elif isinstance(taus, (list, tuple, np.ndarray)):
        tau_list = [check_tau(t) for t in taus]
    else:
        raise UserError(f"ACDC taus must be a list of thresholds (got {taus!r})")
    if not tau_list:
        raise UserError("ACDC needs at least one threshold tau")
    cands = check_candidates(setup, candidates)
    if max_rows < 1:
        raise UserError(f"max_rows must be at least 1 (got {max_rows})")
    if workers is None:
        shards = LocalShards(setup, cands)
    else:
        shards = workers.acdc_shards(setup, cands)  # the workers' own shards: methods/ never imports distributed
    try:
        engine = _ACDC(setup, cands, absolute, max_rows, shards)
        states = engine.run(tau_list, setup.progress if progress is None else progress)
    finally:
        shards.close()
    wall = time.perf_counter() - t0
    results = [ACDCResult(tau=s.tau, in_circuit=s.keep.copy(), scores=s.scores.astype(np.float32),
                          n_forward_passes=engine.n_forwards, n_edges_evaluated=s.n_measured, wall_time_s=wall,
                          n_edges_dead=s.n_dead, n_masks_evaluated=engine.n_masks) for s in states]
    return results[0] if single else results
