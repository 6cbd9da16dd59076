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
  destination. One recorded forward of the starting circuit per data batch (the clean run when
  every edge is a candidate) gives every source's output before the destination's stage, valid for
  the whole run, so each evaluation starts at the destination's stage. A reader's input is computed
  as the reference residual (every upstream edge out) plus the (live - reference) writes of its
  in-circuit sources; the cached sources' writes are stacked so that mixing them is one product.
- Only what the logits can depend on is run: nodes with no path to the logits in the evaluated
  masks write their reference (exact; see forward_from), as do, with patching, nodes whose incoming
  edges are all out; positions before the batch's first corrupted one are identical in every mask
  (causal attention) and are not run; and a node whose output reaches the logits only position-wise
  (through MLPs, queries and the logits, never through keys or values) runs at each row's last
  position only (in particular the last layer).
- Nodes whose inputs are the same in every mask of a pass are run once for all of them, and
  memoised across passes by what determines their output (their in-circuit sources, recursively),
  so a pass reruns only what its masks change.
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

import hashlib
import math
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import UserError
from ..patching import _project, _rotate, run, source_rows
from ..selection import _readers_of
from .common import Setup

DEFAULT_TAU = 0.01
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


def alive_nodes(graph, keep_matrix: np.ndarray, readers_of) -> tuple[np.ndarray, np.ndarray]:
    """(reader slots, sources) with a path to the logits through kept edges ([n_sources, n_readers])."""
    readers = np.zeros(graph.n_readers, dtype=bool)
    sources = np.zeros(graph.n_sources, dtype=bool)
    readers[graph.n_readers - 1] = True  # the logits
    for s in range(graph.n_sources - 1, 0, -1):  # a source's readers come before anything it writes to
        if (keep_matrix[s] & readers).any():
            sources[s] = True
            readers[readers_of[s]] = True
    return readers, sources


class _BatchCache:
    """What every evaluation on one data batch reuses, from one recorded forward of the starting
    circuit (the clean run when every edge is a candidate) and the reference run:

    - ref_resid[stage] [B, P - p0, d]: what a reader of that stage sees when every edge into it is out
      of the circuit: the stage's residual minus every upstream source's (live - reference) write
      (for patching, the corrupted run's residual). A reader's input under any mask is this plus the
      (live - reference) writes of the sources whose edges into it are in the circuit.
    - the (live - reference) writes of every source, stacked in source order [B, P - p0, d, S] (kept
      while it fits in setup.write_cache_bytes, else rebuilt when needed).
    - memo: the writes of nodes run once for all masks of a pass, keyed by what determines them, so
      that a pass does not rerun what an earlier pass already ran (same budget, least recently used
      out first).
    - p0: the first position at which any source's output differs from its reference in this batch
      (with patching, the first corrupted token). Before it every source computes the same thing
      under any mask (attention is causal), so forwards compute positions p0.. only and take the keys
      and values of earlier positions from the recorded run (prefix_kv)."""

    def __init__(self, setup: Setup, batch, off0: torch.Tensor | None, budget: list[int]):
        a, g = setup.adapter, setup.graph
        self.setup, self.batch, self.budget = setup, batch, budget
        self.ids, self.last = batch.clean, batch.clean_last
        self.ref = setup.reference(batch)
        clean = run(a, g, batch.clean, last=batch.clean_last, record=off0 is None, record_resid=off0 is None)
        self.clean_logits = clean.logits
        self.n_forwards = 1 + (setup.intervention == "patching")
        if off0 is None:
            base = clean
        else:
            base = run(a, g, batch.clean, last=batch.clean_last, ref=self.ref, off=off0[None].to(self.ids.device),
                       record=True, record_resid=True)
            self.n_forwards += 1
        self.base_logits = base.logits
        acts = base.acts
        b, p = self.ids.shape
        self.resid = acts.resid
        self.d_emb = (acts.embed - self.ref.embed).expand(b, p, -1)
        self.d_z = [(z - r).expand(b, p, -1, -1) for z, r in zip(acts.z, self.ref.z)]
        self.d_mlp = [(m - r).expand(b, p, -1) for m, r in zip(acts.mlp, self.ref.mlp)]
        differs = (self.d_emb != 0).any(-1).any(0)
        for t in self.d_z:
            differs |= (t != 0).flatten(2).any(-1).any(0)
        for t in self.d_mlp:
            differs |= (t != 0).any(-1).any(0)
        first = int(torch.nonzero(differs)[0]) if bool(differs.any()) else p
        self.p0 = min(first, int(self.last.min()))
        self._stack = None
        full = self.stack()
        self.ref_resid = [r[:, self.p0:] - full[..., :st.n_upstream].sum(-1) for r, st in zip(self.resid, g.stages)]
        self._prefix_kv: dict[int, tuple] = {}
        self.memo: OrderedDict = OrderedDict()  # writes of nodes run once for all masks, by identity
        self._stack_last = None
        self.rotary = a.rotary(self.resid[0][:1], torch.arange(p, device=self.ids.device)[None])

    def stack(self) -> torch.Tensor:
        """[B, P - p0, d, n_sources] (sources last, so that mixing them is one matrix product): every
        source's (live - reference) write."""
        if self._stack is not None:
            return self._stack
        a, g, p0 = self.setup.adapter, self.setup.graph, self.p0
        parts = [self.d_emb[:, p0:].unsqueeze(3)]
        for layer in range(g.n_layers):
            w_out = a.heads(layer).out
            parts.append(torch.einsum("bphc,hcm->bpmh", self.d_z[layer][:, p0:], w_out.to(self.d_z[layer].dtype)))
            parts.append(self.d_mlp[layer][:, p0:].unsqueeze(3))
        full = torch.cat(parts, dim=3)
        size = full.numel() * full.element_size()
        if self.budget[0] >= size:
            self.budget[0] -= size
            self._stack = full
        return full

    def stack_last(self) -> torch.Tensor:
        """[B, 1, d, n_sources]: stack() at each row's last position."""
        if self._stack_last is None:
            self._stack_last = self.stack()[torch.arange(len(self.last)), self.last - self.p0].unsqueeze(1)
        return self._stack_last

    def remember(self, key, writes: torch.Tensor) -> None:
        """Memoise a node's writes; the least recently used go first when the budget is spent."""
        size = writes.numel() * writes.element_size()
        while self.memo and size > self.budget[0]:
            _, old = self.memo.popitem(last=False)
            self.budget[0] += old.numel() * old.element_size()
        if size <= self.budget[0]:
            self.memo[key] = writes
            self.budget[0] -= size

    def prefix_kv(self, layer: int):
        """Keys and values [B, p0, kv_heads, d_head] of the positions before p0 at a layer."""
        if layer not in self._prefix_kv:
            a = self.setup.adapter
            w = a.heads(layer)
            xn = a.attn_norm(layer, self.resid[2 * layer][:, :self.p0])
            self._prefix_kv[layer] = (_project(xn, w.k, w.k_bias), _project(xn, w.v, w.v_bias))
        return self._prefix_kv[layer]


def _cached_sources(graph, start: int) -> int:
    """Sources whose output the forward starting at stage `start` takes from the cache: those written
    before that stage (a prefix of the source order)."""
    stage = graph.stages[start]
    if stage.kind == "attn":
        return source_rows(graph, stage.layer)[0]
    if stage.kind == "mlp":
        return source_rows(graph, stage.layer)[1]
    return graph.n_sources


def _attend_at(adapter, layer: int, q, k, v, rotary, q_pos: torch.Tensor) -> torch.Tensor:
    """Attention for queries at positions q_pos [N | 1, Pq] over keys/values at every position
    0..P-1. q [N, Pq, H, d_head], k and v [N, P, kv_heads, d_head]. The arithmetic of
    `patching.attend`, which is the case q_pos = 0..P-1."""
    n, pq, h, dh = q.shape
    p, kv = k.shape[1], k.shape[2]
    if rotary is not None:
        cos, sin = rotary
        q = _rotate(q, cos[0][q_pos], sin[0][q_pos])
        k = _rotate(k, cos, sin)
    qg = q.view(n, pq, kv, h // kv, dh).permute(0, 2, 3, 1, 4)  # [N, kv, group, Pq, dh]
    kg = k.permute(0, 2, 3, 1).unsqueeze(2)  # [N, kv, 1, dh, P]
    vg = v.permute(0, 2, 1, 3).unsqueeze(2)  # [N, kv, 1, P, dh]
    scores = (qg @ kg) * adapter.attn_scale(layer)
    j = torch.arange(p, device=q.device)
    allowed = j[None, None, :] <= q_pos[:, :, None]
    window = adapter.sliding_window(layer)
    if window is not None:
        allowed &= j[None, None, :] > q_pos[:, :, None] - window
    mask = torch.zeros(allowed.shape, dtype=scores.dtype, device=q.device).masked_fill(
        ~allowed, torch.finfo(scores.dtype).min)
    scores = scores + mask[:, None, None]
    pattern = torch.softmax(scores, dim=-1, dtype=torch.float32).to(v.dtype)
    return (pattern @ vg).permute(0, 3, 1, 2, 4).reshape(n, pq, h, dh)


ALL, LAST = 2, 1  # positions a node is needed at: every computed one (p0..), or each row's last
# What determines a source's output in a pass, when it is not a memo key: the recorded run's (the
# cache, before the pass's first stage) or its reference (not run).
_BASE, _REF = b"\0" * 15 + b"b", b"\0" * 15 + b"r"


def positions_needed(graph, in_any: np.ndarray, alive: np.ndarray, readers_of, slots) -> np.ndarray:
    """Per source: ALL, LAST or 0 (not needed). The logits read each row's last position; an MLP is
    position-wise; a head's queries are needed where its output is, its keys and values at every
    position. A source is needed where any alive reader it has an in-circuit edge to is."""
    need = np.zeros(graph.n_sources, dtype=np.int8)
    reader_need = np.zeros(graph.n_readers, dtype=np.int8)
    reader_need[graph.n_readers - 1] = LAST
    for s in range(graph.n_sources - 1, 0, -1):
        if alive[s]:
            need[s] = reader_need[in_any[s]].max(initial=0)
            if need[s]:
                rs = readers_of[s]
                reader_need[rs] = np.maximum(reader_need[rs], np.where(slots[rs] >= 1, ALL, need[s]))
    return need


@torch.no_grad()
def forward_from(setup: Setup, c: _BatchCache, start: int, off: torch.Tensor, alive_sources: np.ndarray,
                 readers_of, slots: np.ndarray) -> torch.Tensor:
    """Logits [K * B, V] of K edge masks off [K, n_sources, n_readers] (1 = edge out of the circuit) on
    one data batch, started at stage `start`. Rows are mask-major: row k * B + b is example b under
    mask k.

    Valid when every edge into a stage before `start` is as in the starting circuit (true for every
    mask ACDC evaluates there). The patching core's definition (`patching.run`): a reader sees the
    reference residual plus the (live - reference) writes of its in-circuit sources. Only what the
    logits can depend on is computed:
    - sources before `start` are not run: their writes come from the cache;
    - a node with no path to the logits in any of the K masks (alive_sources False) is not run: it
      writes its reference output. Exact: every edge out of it is out of the circuit or leads to such
      nodes only, and an out-of-circuit edge carries the reference whatever the node computes. With
      patching, neither is a node with every incoming edge out of the circuit: it sees the corrupted
      run's residual and so computes the corrupted output, its reference;
    - positions before the batch's p0 are not run (see _BatchCache), and a node whose output reaches
      the logits only position-wise (through MLPs, queries and the logits) runs at each row's last
      position only (see positions_needed);
    - a node whose inputs are the same under every mask (no in-circuit edge from a node that depends
      on the mask) is run once for all K masks, and memoised across passes by what determines its
      output."""
    a, g = setup.adapter, setup.graph
    k_masks = off.shape[0]
    b, p = c.ids.shape
    p0, dev = c.p0, off.device
    dtype = c.resid[0].dtype
    on = torch.as_tensor(g.valid, dtype=dtype, device=dev) - off.to(dtype)  # 1 where the edge is in
    on0 = on[0]
    diff = on - on0
    on_any = (on != 0).any(dim=0).cpu().numpy()  # [S, R]: in the circuit in some mask
    on_np = (on0 != 0).cpu().numpy()
    varying = (diff != 0).any(dim=0).any(dim=0).cpu().numpy()  # readers whose column differs among masks
    n_cached = _cached_sources(g, start)
    need = positions_needed(g, on_any, alive_sources, readers_of, slots)
    need[:n_cached] = ALL  # (cached: both versions exist)
    patching = setup.intervention == "patching"
    rows = torch.arange(b, device=dev)
    at = c.last - p0  # each row's last position among the computed ones
    on_cached, diff_cached = on0.clone(), diff.clone()  # the cached sources' part
    on_cached[n_cached:] = 0
    diff_cached[:, n_cached:] = 0
    cached = {ALL: c.stack().unsqueeze(0), LAST: c.stack_last().unsqueeze(0)}
    # Writes of the sources run here, by source index: {ALL | LAST: [K | 1, B, Pc | 1, d, n]}; and what
    # determines each one's output (None when it depends on the mask).
    chunks: list[tuple[np.ndarray, torch.Tensor, dict]] = []
    ident: dict[int, bytes | None] = {}

    def at_last(t):  # [kx, B, Pc, ...] -> [kx, B, 1, ...]
        return t[:, rows, at].unsqueeze(2)

    def version(ch, mode):
        if mode not in ch:
            ch[mode] = at_last(ch[ALL])
        return ch[mode]

    def mix(t, o):  # t [kx, B, P', d, S'], o [S', R] -> [kx, B, P', R, d]
        out = t.reshape(-1, t.shape[-1]) @ o
        return out.view(*t.shape[:-1], o.shape[-1]).transpose(-1, -2)

    def mix_each(t, o):  # t [kx, B, P', d, S'], o [K, S', V] (per mask) -> [K, B, P', V, d]
        kx, nv = t.shape[0], o.shape[-1]
        if kx == 1:
            out = t.reshape(-1, t.shape[-1]) @ o.permute(1, 0, 2).reshape(o.shape[1], -1)
            return out.view(*t.shape[1:-1], k_masks, nv).permute(3, 0, 1, 4, 2)
        out = torch.bmm(t.reshape(kx, -1, t.shape[-1]), o)
        return out.view(*t.shape[:-1], nv).transpose(-1, -2)

    def identity(readers: np.ndarray, what) -> bytes | None:
        """What determines the output of a node with these readers: its in-circuit sources and what
        determines theirs; None if that depends on the mask."""
        if varying[readers].any():
            return None
        parts = [repr(what).encode(), on_np[:, readers].tobytes()]  # both of fixed size for a node
        for s in np.flatnonzero(on_np[:, readers].any(axis=1)):
            i = _BASE if s < n_cached else ident.get(int(s), _REF)  # not run here: its reference
            if i is None:
                return None
            parts.append(int(s).to_bytes(4, "little") + i)
        return hashlib.blake2b(b"".join(parts), digest_size=16).digest()

    def needed(readers: np.ndarray) -> bool:
        """False for a node that computes its reference output (see above)."""
        return not patching or bool(on_any[:, readers].any())

    def inputs(stage_idx: int, readers: np.ndarray, mode: int) -> torch.Tensor:
        """[K | 1, B, Pc | 1, len(readers), d]: each reader's input under each mask."""
        cols = torch.as_tensor(readers, device=dev)
        base = c.ref_resid[stage_idx]
        base = base[rows, at].unsqueeze(1) if mode == LAST else base
        x = base.unsqueeze(-2).unsqueeze(0)
        if on_any[:n_cached, readers].any():
            x = x + mix(cached[mode], on_cached[:, cols])
        x = x.expand(*x.shape[:3], len(readers), x.shape[-1])
        for src, srct, ch in chunks:
            if on_any[src][:, readers].any():
                x = x + mix(version(ch, mode), on0[srct][:, cols])
        vary = np.flatnonzero(varying[readers])
        if len(vary):
            vcols = cols[torch.as_tensor(vary, device=dev)]
            corr = mix_each(cached[mode], diff_cached[:, :, vcols])
            for src, srct, ch in chunks:
                if on_any[src][:, readers[vary]].any():
                    corr = corr + mix_each(version(ch, mode), diff[:, srct][:, :, vcols])
            x = x.expand(k_masks, *x.shape[1:]).clone()
            x[:, :, :, torch.as_tensor(vary, device=dev)] += corr
        return x

    def flat(t):  # [K, B, ...] -> [K*B, ...]
        return t.reshape(t.shape[0] * t.shape[1], *t.shape[2:])

    def widen(t, kx):  # [K | 1, ...] -> [kx, ...]
        return t.expand(kx, *t.shape[1:])

    def add_chunk(src: np.ndarray, writes: torch.Tensor, mode: int, key):
        chunks.append((src, torch.as_tensor(src, device=dev), {mode: writes}))
        for s in src:
            ident[int(s)] = key

    for idx in range(start, len(g.stages)):
        stage = g.stages[idx]
        layer = stage.layer
        if stage.kind == "attn":
            h0 = source_rows(g, layer)[0]
            h, kv = g.n_heads, g.n_kv_readers
            size = h // kv
            w = a.heads(layer)
            for grp in range(kv):  # one k/v reader group at a time (a query head, unless the graph is grouped)
                heads = np.arange(grp * size, (grp + 1) * size)
                wkv = g.kv_weight_heads()[grp]  # the model's key/value head these readers project through
                mode = int(need[h0 + heads].max())
                q_readers = stage.start + heads
                kv_readers = np.array([stage.start + h + grp, stage.start + h + kv + grp])
                if not mode or not needed(np.concatenate([q_readers, kv_readers])):
                    for s in h0 + heads:
                        ident[int(s)] = _REF
                    continue
                key = identity(np.concatenate([q_readers, kv_readers]), ("attn", layer, grp, mode))
                if key is not None and key in c.memo:
                    c.memo.move_to_end(key)
                    add_chunk(h0 + heads, c.memo[key], mode, key)
                    continue
                xkv = inputs(idx, kv_readers, ALL)
                xq = inputs(idx, q_readers, mode)
                kx = max(xq.shape[0], xkv.shape[0])
                xkv = a.attn_norm(layer, xkv)
                kvs = slice(wkv, wkv + 1)
                k = _project(flat(xkv[:, :, :, 0]), w.k[kvs], None if w.k_bias is None else w.k_bias[kvs])
                v = _project(flat(xkv[:, :, :, 1]), w.v[kvs], None if w.v_bias is None else w.v_bias[kvs])
                if p0 > 0:
                    pk, pv = c.prefix_kv(layer)
                    k = torch.cat([flat(widen(pk[None, :, :, kvs], k.shape[0] // b)), k], dim=1)
                    v = torch.cat([flat(widen(pv[None, :, :, kvs], v.shape[0] // b)), v], dim=1)
                hs = slice(grp * size, (grp + 1) * size)
                q = _project(flat(widen(a.attn_norm(layer, xq), kx)), w.q[hs], None if w.q_bias is None else w.q_bias[hs])
                if k.shape[0] != q.shape[0]:
                    k, v = (flat(widen(t.view(-1, b, *t.shape[1:]), kx)) for t in (k, v))
                q_pos = c.last.repeat(kx)[:, None] if mode == LAST else torch.arange(p0, p, device=dev)[None]
                z = _attend_at(a, layer, q, k, v, c.rotary, q_pos)
                z = z.view(kx, b, *z.shape[1:])
                ref_z = c.ref.z[layer][:, :, hs]
                if ref_z.shape[1] > 1:
                    ref_z = ref_z[rows, c.last].unsqueeze(1) if mode == LAST else ref_z[:, p0:]
                d_z = z - ref_z
                writes = torch.einsum("kbphc,hcm->kbpmh", d_z, w.out[hs].to(d_z.dtype)).contiguous()
                add_chunk(h0 + heads, writes, mode, key if kx == 1 else None)
                if key is not None and kx == 1:
                    c.remember(key, writes)
        elif stage.kind == "mlp":
            src = source_rows(g, layer)[1]
            readers = np.array([stage.start])
            mode = int(need[src])
            if not mode or not needed(readers):
                ident[src] = _REF
                continue
            key = identity(readers, ("mlp", layer, mode))
            if key is not None and key in c.memo:
                c.memo.move_to_end(key)
                add_chunk(np.array([src]), c.memo[key], mode, key)
                continue
            ref_mlp = c.ref.mlp[layer]
            if ref_mlp.shape[1] > 1:
                ref_mlp = ref_mlp[rows, c.last].unsqueeze(1) if mode == LAST else ref_mlp[:, p0:]
            x = inputs(idx, readers, mode)
            out = a.mlp(layer, a.mlp_norm(layer, x[:, :, :, 0]))
            d_out = (out - ref_mlp).unsqueeze(-1)
            add_chunk(np.array([src]), d_out, mode, key if d_out.shape[0] == 1 else None)
            if key is not None and d_out.shape[0] == 1:
                c.remember(key, d_out)
        else:
            x = inputs(idx, np.array([stage.start]), LAST)[:, :, 0, 0]  # [K | 1, B, d] at each row's last position
            logits = a.unembed(x)
            return logits.expand(k_masks, *logits.shape[1:]).reshape(k_masks * b, -1)
    raise AssertionError("unreachable: the logits stage is last")


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

    The whole task in a single process; one shard of its rows in a Ray worker (discovery.distributed).
    Sums, not means, so that the driver can add the shards' sums (float64) and divide by the task's
    row count: the decisions then need not know where the rows live."""

    def __init__(self, setup: Setup, candidates: np.ndarray):
        self.setup, self.graph = setup, setup.graph
        g = self.graph
        self.readers_of = _readers_of(g)
        self.valid = g.valid
        self.slots = np.array([{"k": 1, "v": 2}.get(x, 0) for x in g.reader_slot])  # key/value readers > 0
        budget = [setup.write_cache_bytes]
        off0 = None if bool(candidates.all()) else torch.as_tensor(self.off_matrix(candidates), dtype=torch.float32)
        self.caches = [_BatchCache(setup, batch, off0, budget) for batch in setup.batches()]
        self.n_forwards = sum(c.n_forwards for c in self.caches)
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
                alive = np.zeros(self.graph.n_sources, dtype=bool)
                for m in chunk:
                    alive |= alive_nodes(self.graph, self.graph.edge_mask_matrix(m), self.readers_of)[1]
                for c in self.caches:
                    logits = forward_from(self.setup, c, start, off, alive, self.readers_of, self.slots)
                    b = len(c.batch.rows)
                    sums = torch.stack([self.setup.metric(logits[i * b:(i + 1) * b], c.batch, c.clean_logits)
                                        .double().sum() for i in range(len(chunk))])
                    totals[lo:lo + len(chunk)] += sums.cpu().numpy()
                    self.n_forwards += 1
            out.append(totals)
        return out


class LocalShards:
    """All rows in this process: one MaskEvaluator. (discovery.distributed.RemoteShards has the same
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
        self.readers_of = _readers_of(g)
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
        bar = tqdm(total=n * len(states), desc="acdc", file=sys.stderr, disable=not progress, leave=False)
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
    setup.progress. workers: a discovery.distributed.Workers to shard the rows over (each round's
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
        from ..distributed import RemoteShards
        shards = RemoteShards(workers, setup, cands)
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
