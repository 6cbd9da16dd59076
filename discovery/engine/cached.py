"""Cached runs of the patching core: many edge masks on one data batch, starting at a stage, reusing
the upstream activations recorded once, and skipping what cannot matter.

`run_cached(cache, start, off, skip)` (also `patching.run(..., cache=)`) gives the logits of K masks
in one no-grad pass; its exact definition and what it skips are in its docstring. The RunCache holds
what every such run on one batch reuses (the recorded base run, the reference residuals, the stacked
writes within a byte budget, the memo of node writes). Evaluation and ACDC share it.

run_cached is one function of ~300 lines with its helpers as closures: they share the run's buffers
and masks, which separate functions would pass around a dozen at a time."""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import numpy as np
import torch

from ..core.graph import Graph
from ..model.adapters import Adapter
from .attention import attend_at, project
from .patching import Activations, RunResult, run


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


class RunCache:
    """What every cached run on one data batch reuses (`run_cached`, or `patching.run(..., cache=)`), from one recorded forward
    of a base circuit (the clean model when `off0` is None) and the reference activations:

    - ref_resid[stage] [B, P - p0, d]: what a reader of that stage sees when every edge into it is out
      of the circuit: the stage's residual minus every upstream source's (live - reference) write
      (for patching, the corrupted run's residual). A reader's input under any mask is this plus the
      (live - reference) writes of the sources whose edges into it are in the circuit.
    - the (live - reference) writes of every source, stacked in source order [S, B, P - p0, d] (kept
      while it fits in the byte budget, else rebuilt when needed).
    - memo: the writes of nodes run once for all masks of a run, keyed by what determines them, so
      that a later run does not redo what an earlier one already did (same budget, least recently
      used out first).
    - p0: the first position at which any source's output differs from its reference in this batch
      (with patching, the first corrupted token). Before it every source computes the same thing
      under any mask (attention is causal), so cached runs compute positions p0.. only and take the
      keys and values of earlier positions from the recorded run (prefix_kv).

    ref_is_run: the reference is what each node computes when all its inputs carry the reference
    (patching: the corrupted run); only then is a node whose every incoming edge is out skipped.
    budget: the bytes the stacked writes and the memo may take (an engine.context.MemoryBudget, or
    anything with `left`, take(n) and give(n)), shared by the caches of one setup."""

    def __init__(self, adapter: Adapter, graph: Graph, ids: torch.Tensor, last: torch.Tensor, ref: Activations, *,
                 ref_is_run: bool, budget, off0: torch.Tensor | None = None,
                 ref_logits: torch.Tensor | None = None, clean: RunResult | None = None):
        self.adapter, self.graph, self.budget = adapter, graph, budget
        a, g = adapter, graph
        self.ids, self.last, self.ref, self.ref_is_run = ids, last, ref, ref_is_run
        self.ref_logits = ref_logits  # the empty circuit's logits, when known (patching: the corrupted run)
        self.readers_of = g.readers_of
        self.slots = np.array([{"k": 1, "v": 2}.get(x, 0) for x in g.reader_slot])  # key/value readers > 0
        self.n_forwards = 0
        if clean is None or not clean.acts.resid:  # else: this batch's clean run, recorded by the caller
            clean = run(a, g, ids, last=last, record=off0 is None, record_resid=off0 is None)
            self.n_forwards = 1
        self.clean_logits = clean.logits
        if off0 is None:
            base = clean
        else:
            base = run(a, g, ids, last=last, ref=ref, off=off0[None].to(ids.device), record=True, record_resid=True)
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
        self.ref_resid = [r[:, self.p0:] - full[:st.n_upstream].sum(0) for r, st in zip(self.resid, g.stages)]
        self._prefix_kv: dict[int, tuple] = {}
        self.memo: OrderedDict = OrderedDict()  # writes of nodes run once for all masks, by identity
        self._stack_last = None
        self.rotary = a.rotary(self.resid[0][:1], torch.arange(p, device=self.ids.device)[None])

    def run(self, start: int, off: torch.Tensor, skip: bool = True) -> torch.Tensor:
        """run_cached(self, start, off, skip): what `patching.run(..., cache=self)` computes."""
        return run_cached(self, start, off, skip)

    def nbytes(self) -> int:
        """Bytes held outside the shared budget (residuals, activation differences, reference)."""
        ts = [*self.resid, *self.ref_resid, self.d_emb, *self.d_z, *self.d_mlp, self.ref.embed, *self.ref.z,
              *self.ref.mlp]
        return sum(t.untyped_storage().nbytes() for t in ts)

    def stack(self) -> torch.Tensor:
        """[n_sources, B, P - p0, d] (source-major, so that mixing them into reader inputs is one
        matrix product): every source's (live - reference) write."""
        if self._stack is not None:
            return self._stack
        a, g, p0 = self.adapter, self.graph, self.p0
        parts = [self.d_emb[:, p0:].unsqueeze(0)]
        for layer in range(g.n_layers):
            w_out = a.heads(layer).out
            parts.append(torch.einsum("bphc,hcm->hbpm", self.d_z[layer][:, p0:], w_out.to(self.d_z[layer].dtype)))
            parts.append(self.d_mlp[layer][:, p0:].unsqueeze(0))
        full = torch.cat(parts, dim=0)
        size = full.numel() * full.element_size()
        if self.budget.take(size):
            self._stack = full
        return full

    def stack_last(self) -> torch.Tensor:
        """[n_sources, B, 1, d]: stack() at each row's last position."""
        if self._stack_last is None:
            self._stack_last = self.stack()[:, torch.arange(len(self.last)), self.last - self.p0].unsqueeze(2)
        return self._stack_last

    def remember(self, key, writes: torch.Tensor) -> None:
        """Memoise a node's writes; the least recently used go first when the budget is spent."""
        size = writes.numel() * writes.element_size()
        while self.memo and size > self.budget.left:
            _, old = self.memo.popitem(last=False)
            self.budget.give(old.numel() * old.element_size())
        if self.budget.take(size):
            self.memo[key] = writes

    def forget(self) -> None:
        """Drop the memo of node writes (its bytes go back to the budget); the recorded runs stay."""
        for writes in self.memo.values():
            self.budget.give(writes.numel() * writes.element_size())
        self.memo.clear()

    def prefix_kv(self, layer: int):
        """Keys and values [B, p0, kv_heads, d_head] of the positions before p0 at a layer."""
        if layer not in self._prefix_kv:
            a = self.adapter
            w = a.heads(layer)
            xn = a.attn_norm(layer, self.resid[2 * layer][:, :self.p0])
            self._prefix_kv[layer] = (project(xn, w.k, w.k_bias), project(xn, w.v, w.v_bias))
        return self._prefix_kv[layer]


def cached_sources(graph, start: int) -> int:
    """Sources whose output the forward starting at stage `start` takes from the cache: those written
    before that stage (a prefix of the source order)."""
    stage = graph.stages[start]
    if stage.kind == "attn":
        return graph.head_rows(stage.layer)[0]
    if stage.kind == "mlp":
        return graph.head_rows(stage.layer)[1]
    return graph.n_sources


ALL, LAST = 2, 1  # positions a node is needed at: every computed one (p0..), or each row's last
# What determines a source's output in a pass, when it is not a memo key: the recorded run's (the
# cache, before the pass's first stage) or its reference (not run).
_BASE, _REF = b"\0" * 15 + b"b", b"\0" * 15 + b"r"


def positions_needed(graph, in_any: np.ndarray, alive: np.ndarray, readers_of, slots) -> np.ndarray:
    """Per source: ALL, LAST or 0 (not needed). The logits read each row's last position; an MLP is
    position-wise; a head's queries are needed where its output is, its keys and values at every
    position. A source is needed where any alive reader it has an in-circuit edge to is. The heads
    of a k/v reader group (grouped graphs of GQA models) run together, so each runs (and reads its
    queries) where any of them is needed."""
    need = np.zeros(graph.n_sources, dtype=np.int8)
    reader_need = np.zeros(graph.n_readers, dtype=np.int8)
    reader_need[graph.n_readers - 1] = LAST
    h, size = graph.n_heads, graph.n_heads // graph.n_kv_readers  # heads per k/v reader group
    for s in range(graph.n_sources - 1, 0, -1):
        if alive[s]:
            need[s] = reader_need[in_any[s]].max(initial=0)
        within = (s - 1) % (h + 1)  # the head's index in its layer; h for the MLP
        if within == h:
            if need[s]:
                reader_need[readers_of[s]] = np.maximum(reader_need[readers_of[s]], need[s])
        elif within % size == 0:  # the group's first head: all of the group is known
            group = np.arange(s, s + size)
            mode = need[group].max()
            if mode:
                need[group[need[group] > 0]] = mode
                for hs in group:
                    rs = readers_of[hs]
                    reader_need[rs] = np.maximum(reader_need[rs], np.where(slots[rs] >= 1, ALL, mode))
    return need


@torch.no_grad()
def run_cached(c: RunCache, start: int, off: torch.Tensor, skip: bool) -> torch.Tensor:
    """run(..., cache=c, start_stage=start, off=off): logits [K * B, V] of K edge masks off
    [K, n_sources, n_readers] (1 = edge out of the circuit) on the cache's batch. Rows are mask-major:
    row k * B + b is example b under mask k.

    Valid when every edge into a stage before `start` is as in the cache's base circuit (any mask
    when start is 0). The patching core's definition: a reader sees the reference residual plus the
    (live - reference) writes of its in-circuit sources. With skip, only what the logits can depend
    on is computed (skip=False computes every node at every position p0.., the same numbers):
    - a node with no path to the logits in any of the K masks is not run: it writes its reference
      output. Exact: every edge out of it is out of the circuit or leads to such nodes only, and an
      out-of-circuit edge carries the reference whatever the node computes. With ref_is_run
      (patching), neither is a node with every incoming edge out of the circuit: it sees the
      reference residual and so computes its reference output;
    - a node whose output reaches the logits only position-wise (through MLPs, queries and the
      logits) runs at each row's last position only (see positions_needed);
    - a node whose inputs are the same under every mask (no in-circuit edge from a node that depends
      on the mask) is run once for all K masks, and memoised across runs by what determines its
      output.
    Always: sources before `start` are not run (their writes come from the cache), nor positions
    before the batch's p0 (see RunCache)."""
    a, g = c.adapter, c.graph
    readers_of, slots = c.readers_of, c.slots
    if skip:
        alive_sources = np.zeros(g.n_sources, dtype=bool)
        valid = g.valid
        for m in (off.cpu().numpy() < 1) & valid:  # edges at least partly in the circuit
            alive_sources |= alive_nodes(g, m, readers_of)[1]
    else:
        alive_sources = np.ones(g.n_sources, dtype=bool)
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
    n_cached = cached_sources(g, start)
    need = positions_needed(g, on_any, alive_sources, readers_of, slots) if skip else np.full(g.n_sources, ALL, np.int8)
    need[:n_cached] = ALL  # (cached: both versions exist)
    patching = c.ref_is_run and skip
    rows = torch.arange(b, device=dev)
    at = c.last - p0  # each row's last position among the computed ones
    on_cached, diff_cached = on0[:n_cached], diff[:, :n_cached]  # the cached sources' part
    if n_cached == 1 and c._stack is None:  # from the start: only the embedding's write, not the whole stack
        emb = c.d_emb[:, p0:]
        cached = {ALL: emb[None, None], LAST: emb[rows, at][None, None, :, None]}
    else:
        cached = {ALL: c.stack()[:n_cached].unsqueeze(0), LAST: c.stack_last()[:n_cached].unsqueeze(0)}
    # Writes (live - reference) of the sources run here: those that are the same under every mask in
    # `bufs` {ALL | LAST: [n_sources - n_cached, B, Pc | 1, d]} (source-major, so that a node's writes
    # are one contiguous copy and one product per stage mixes the in-circuit ones); those that differ among the
    # masks in `chunks` [(sources, their indices, {ALL | LAST: [K, n, B, Pc | 1, d]})]. And what
    # determines each one's output (None when it depends on the mask).
    bufs: dict[int, torch.Tensor] = {}
    in_buf = np.zeros(g.n_sources, dtype=bool)
    chunks: list[tuple[np.ndarray, torch.Tensor, dict]] = []
    ident: dict[int, bytes | None] = {}

    in_buf_t = torch.zeros(g.n_sources, dtype=dtype, device=dev)  # in_buf, as a factor
    zeroed = np.zeros(g.n_sources, dtype=bool)  # buffer rows that stay empty, filled with zeros

    def buffer(mode):
        if mode not in bufs:
            bufs[mode] = torch.empty(g.n_sources - n_cached, b, p - p0 if mode == ALL else 1, c.resid[0].shape[-1],
                                     dtype=dtype, device=dev)
            if zeroed.any():
                bufs[mode][torch.as_tensor(np.flatnonzero(zeroed) - n_cached, device=dev)] = 0
        return bufs[mode]

    def buffered(ran: np.ndarray, mode):
        """The buffered writes of the sources `ran` (ascending): ([S', B, P', d], the sources' span (a
        slice or an index), on0's rows for them, zero where a row of the span is not buffered). A
        contiguous run of the buffer is a view; one with few gaps is the view with the gaps zeroed
        (no copy), otherwise the rows are gathered."""
        lo, hi = int(ran[0]), int(ran[-1]) + 1
        if 2 * len(ran) < hi - lo:
            idx = torch.as_tensor(ran, device=dev)
            return buffer(mode)[idx - n_cached], idx, on0[idx]
        gaps = np.flatnonzero(~in_buf[lo:hi] & ~zeroed[lo:hi]) + lo
        if len(gaps):  # sources upstream of this stage that will never be buffered
            for m in bufs:
                bufs[m][torch.as_tensor(gaps - n_cached, device=dev)] = 0
            zeroed[gaps] = True
        span = slice(lo, hi)
        return buffer(mode)[lo - n_cached:hi - n_cached], span, on0[span] * in_buf_t[span, None]

    def at_last(t):  # [kx, n, B, Pc, d] -> [kx, n, B, 1, d]
        return t[:, :, rows, at].unsqueeze(3)

    def version(ch, mode):
        if mode not in ch:
            ch[mode] = at_last(ch[ALL])
        return ch[mode]

    def mix(t, o):  # t [kx, S', B, P', d], o [S', R] -> [kx, R, B, P', d]
        out = o.T @ t.reshape(t.shape[0], t.shape[1], -1)
        return out.view(t.shape[0], o.shape[1], *t.shape[2:])

    def mix_each(t, o):  # t [kx, S', B, P', d], o [K, S', V] (per mask) -> [K, V, B, P', d]
        out = o.transpose(1, 2) @ t.reshape(t.shape[0], t.shape[1], -1)
        return out.view(k_masks, o.shape[2], *t.shape[2:])

    def identity(readers: np.ndarray, what) -> bytes | None:
        """What determines the output of a node with these readers: its in-circuit sources and what
        determines theirs; None if that depends on the mask."""
        if not skip or varying[readers].any():
            return None
        parts = [repr(what).encode(), on_np[:, readers].tobytes()]  # both of fixed size for a node
        for s in np.flatnonzero(on_np[:, readers].any(axis=1)):
            i = _BASE if s < n_cached else ident.get(int(s), _REF)  # not run here: its reference
            if i is None:
                return None
            parts.append(int(s).to_bytes(4, "little") + i)
        return hashlib.blake2b(b"".join(parts), digest_size=16).digest()

    def mask_dependent(readers: np.ndarray) -> bool:
        """Whether these readers' inputs differ among the masks: their edges do, or an in-circuit
        source's writes do."""
        return bool(varying[readers].any()) or any(
            next(iter(ch.values())).shape[0] > 1 and on_any[src][:, readers].any() for src, _, ch in chunks)

    def needed(readers: np.ndarray) -> bool:
        """False for a node that computes its reference output (see above)."""
        return not patching or bool(on_any[:, readers].any())

    def inputs(stage_idx: int, readers: np.ndarray, mode: int) -> torch.Tensor:
        """[K | 1, len(readers), B, Pc | 1, d] (reader-major): each reader's input under each mask."""
        cols = torch.as_tensor(readers, device=dev)
        base = c.ref_resid[stage_idx]
        base = base[rows, at].unsqueeze(1) if mode == LAST else base
        flat_base = base.reshape(1, -1)
        x = None  # [R, B * Pc * d]: the base plus every in-circuit write that is the same under every mask

        def add(coef, t):  # coef [S', R], t [S', B, Pc, d]
            nonlocal x
            t = t.reshape(t.shape[0], -1)
            x = torch.addmm(flat_base, coef.T, t) if x is None else x.addmm_(coef.T, t)

        if on_any[:n_cached, readers].any():
            add(on_cached[:, cols], cached[mode][0])
        n_up = g.stages[stage_idx].n_upstream  # run here, one version for all masks, in the circuit somewhere:
        ran = np.flatnonzero(in_buf[:n_up] & on_any[:n_up][:, readers].any(axis=1))
        if len(ran):
            writes, span, coef = buffered(ran, mode)  # [S', B, P', d]; on0's rows for them
            add(coef[:, cols], writes)
        x = (flat_base.expand(len(readers), -1) if x is None else x).view(1, len(readers), *base.shape)
        for src, srct, ch in chunks:
            if on_any[src][:, readers].any():
                x = x + mix(version(ch, mode), on0[srct][:, cols])
        vary = np.flatnonzero(varying[readers])
        if len(vary):
            vcols = cols[torch.as_tensor(vary, device=dev)]
            corr = mix_each(cached[mode], diff_cached[:, :, vcols])
            if len(ran):
                o = diff[:, span][:, :, vcols] * in_buf_t[span, None]  # [K, S', V]
                corr = corr + mix_each(writes.unsqueeze(0), o)
            for src, srct, ch in chunks:
                if on_any[src][:, readers[vary]].any():
                    corr = corr + mix_each(version(ch, mode), diff[:, srct][:, :, vcols])
            x = x.expand(k_masks, *x.shape[1:]).clone()
            x[:, torch.as_tensor(vary, device=dev)] += corr
        return x

    def flat(t):  # [K, B, ...] -> [K*B, ...]
        return t.reshape(t.shape[0] * t.shape[1], *t.shape[2:])

    def widen(t, kx):  # [K | 1, ...] -> [kx, ...]
        return t.expand(kx, *t.shape[1:])

    def add_chunk(src: np.ndarray, writes: torch.Tensor, mode: int, key):
        """Writes [kx, len(src), B, Pc | 1, d] of these sources; key: what determines them (one for
        all, or one per source)."""
        if writes.shape[0] == 1:
            lo = int(src[0]) - n_cached
            contiguous = bool((np.diff(src) == 1).all())
            at_cols = slice(lo, lo + len(src)) if contiguous else torch.as_tensor(src - n_cached, device=dev)
            w0 = writes[0]  # [n, B, Pc | 1, d]
            buffer(mode)[at_cols] = w0
            if mode == ALL:
                buffer(LAST)[at_cols] = w0[:, rows, at].unsqueeze(2)
            in_buf[src] = True
            in_buf_t[torch.as_tensor(src, device=dev)] = 1
        else:
            chunks.append((src, torch.as_tensor(src, device=dev), {mode: writes}))
        keys = key if isinstance(key, list) else [key] * len(src)
        for s, k_ in zip(src, keys):
            ident[int(s)] = k_

    for idx in range(start, len(g.stages)):
        stage = g.stages[idx]
        layer = stage.layer
        if stage.kind == "attn":
            h0 = g.head_rows(layer)[0]
            h, kv = g.n_heads, g.n_kv_readers
            size = h // kv
            w = a.heads(layer)
            kv_heads = g.kv_weight_heads()  # the model's key/value head each k/v reader projects through
            done, todo = [], []  # (sources, writes, mode, key) from the memo; groups to compute
            for grp in range(kv):  # a k/v reader group (a query head, unless the graph is grouped)
                heads = np.arange(grp * size, (grp + 1) * size)
                mode = int(need[h0 + heads].max())
                q_readers = stage.start + heads
                kv_readers = np.array([stage.start + h + grp, stage.start + h + kv + grp])
                readers = np.concatenate([q_readers, kv_readers])
                if not mode or not needed(readers):
                    for s in h0 + heads:
                        ident[int(s)] = _REF
                    continue
                key = identity(readers, ("attn", layer, grp, mode))
                if key is not None and key in c.memo:
                    c.memo.move_to_end(key)
                    done.append((h0 + heads, c.memo[key], mode, key))
                else:
                    todo.append((grp, heads, mode, key, q_readers, kv_readers, mask_dependent(readers)))
            if todo:  # every group's inputs in one mix per upstream chunk, then attention group by group
                xkv_all = a.attn_norm(layer, inputs(idx, np.concatenate([t[5] for t in todo]), ALL))
                xq_all, q_at = {}, {}
                for m in (ALL, LAST):
                    of_mode = [t for t in todo if t[2] == m]
                    if of_mode:
                        xq_all[m] = a.attn_norm(layer, inputs(idx, np.concatenate([t[4] for t in of_mode]), m))
                        q_at.update({t[0]: i * size for i, t in enumerate(of_mode)})
            for j, (grp, heads, mode, key, _, _, varies) in enumerate(todo):
                xkv = xkv_all[:, 2 * j:2 * j + 2]  # [K | 1, 2, B, P, d]
                xq = xq_all[mode][:, q_at[grp]:q_at[grp] + size]  # [K | 1, size, B, Pc | 1, d]
                if not varies:  # the same input under every mask: run once
                    xkv, xq = xkv[:1], xq[:1]
                kx = max(xq.shape[0], xkv.shape[0])
                kvs = slice(kv_heads[grp], kv_heads[grp] + 1)
                k = project(flat(xkv[:, 0]), w.k[kvs], None if w.k_bias is None else w.k_bias[kvs])
                v = project(flat(xkv[:, 1]), w.v[kvs], None if w.v_bias is None else w.v_bias[kvs])
                if p0 > 0:
                    pk, pv = c.prefix_kv(layer)
                    k = torch.cat([flat(widen(pk[None, :, :, kvs], k.shape[0] // b)), k], dim=1)
                    v = torch.cat([flat(widen(pv[None, :, :, kvs], v.shape[0] // b)), v], dim=1)
                hs = slice(grp * size, (grp + 1) * size)
                xq = widen(xq, kx)
                xq = flat(xq[:, 0]) if size == 1 else flat(xq.permute(0, 2, 3, 1, 4))  # [kx B, Pc | 1, (size,) d]
                q = project(xq, w.q[hs], None if w.q_bias is None else w.q_bias[hs])
                if k.shape[0] != q.shape[0]:
                    k, v = (flat(widen(t.view(-1, b, *t.shape[1:]), kx)) for t in (k, v))
                q_pos = c.last.repeat(kx)[:, None] if mode == LAST else torch.arange(p0, p, device=dev)[None]
                z = attend_at(a, layer, q, k, v, c.rotary, q_pos)
                z = z.view(kx, b, *z.shape[1:])
                ref_z = c.ref.z[layer][:, :, hs]
                if ref_z.shape[1] > 1:
                    ref_z = ref_z[rows, c.last].unsqueeze(1) if mode == LAST else ref_z[:, p0:]
                d_z = z - ref_z
                writes = torch.einsum("kbphc,hcm->khbpm", d_z, w.out[hs].to(d_z.dtype)).contiguous()
                done.append((h0 + heads, writes, mode, key if kx == 1 else None))
                if key is not None and kx == 1:
                    c.remember(key, writes)
            by_kind: dict = {}  # the layer's writes as few chunks as possible (one per mode and width)
            for src, writes, mode, key in done:
                used = need[src] > 0  # a head run only for its group's sake: its output is never read
                if not used.all():
                    for s in src[~used]:
                        ident[int(s)] = _REF
                    src, writes = src[used], writes[:, torch.as_tensor(np.flatnonzero(used), device=dev)]
                if len(src):
                    by_kind.setdefault((mode, writes.shape[0]), []).append((src, writes, key))
            for (mode, _), parts in by_kind.items():
                add_chunk(np.concatenate([s for s, _, _ in parts]),
                          parts[0][1] if len(parts) == 1 else torch.cat([w_ for _, w_, _ in parts], dim=1), mode,
                          [k_ for s, _, k_ in parts for _ in s])
        elif stage.kind == "mlp":
            src = g.head_rows(layer)[1]
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
            out = a.mlp(layer, a.mlp_norm(layer, x[:, 0]))
            d_out = (out - ref_mlp).unsqueeze(1)
            add_chunk(np.array([src]), d_out, mode, key if d_out.shape[0] == 1 else None)
            if key is not None and d_out.shape[0] == 1:
                c.remember(key, d_out)
        else:
            x = inputs(idx, np.array([stage.start]), LAST)[:, 0, :, 0]  # [K | 1, B, d] at each row's last position
            logits = a.unembed(x)
            return logits.expand(k_masks, *logits.shape[1:]).reshape(k_masks * b, -1)
    raise AssertionError("unreachable: the logits stage is last")
