"""Attribution graphs of one prompt over transcoders: nodes, edges by batched backward passes.

Nodes, in this order (the order circuit-tracer uses, so adjacency indices line up with its own):
  features  every active feature (layer, position, feature id), sorted by layer, position, feature;
  errors    one per (layer, position), layer-major: index n_features + layer * P + position;
  tokens    one per position (the token embedding);
  logits    the top next-token logits at the last position, most probable first, until their
            cumulative probability reaches `desired_logit_prob` (at most `max_logits`).

Edges (`AttributionGraph.adjacency`, targets x sources, [n_features + n_logits, n_features + L*P + P]):
the direct effect of a source on a target through the linear paths of the local replacement model
(replacement.py), i.e. with every other node's output held fixed:
  source writes  feature: a_f * W_dec[f] (into the MLP output of its layer, and of every later layer
                 for a cross-layer transcoder, each with its own decoder row); error: e_{l,p};
                 token: the token embedding at its position;
  target reads   feature: its pre-activation W_enc[f] . x at its layer and position (the encoder row
                 injected where the transcoder reads); logit t: (W_U[t] - mean_v W_U[v]) . N_f(r_L) at
                 the last position (the demeaned unembedding through the frozen final norm);
  A[t, s] = <d target / d (source's write location), source write>, summed over the locations a
  cross-layer feature writes to. One backward pass through the transposed linear maps serves a batch
  of targets at once; each batch starts at its deepest target's layer and stops at its last position
  (attention is causal), and reads every source it passes.

Memory (float32 throughout, whatever the model's dtype; P tokens, L layers, H heads, n active features):
  recorded run   L * H * P^2 attention patterns, O(L * P * d) activations and errors, and each
                 feature's decoder write packed by position (n * d, times the layers it writes to);
  adjacency      (K + n_logits) * (n + (L + 1) * P) with K = n, or max_feature_nodes when given: the
                 rows are written in place into this one buffer, which is returned as the adjacency
                 (no copy when every feature is attributed). n grows about linearly with P, so this
                 term grows as P^2 without a cap and linearly in P with one;
  one batch      B targets: B * P * d floats a few times over plus B adjacency rows; B is cut so
                 that this working set stays within `memory_budget` bytes (at least one target), and the
                 reads of the sources are done in chunks of positions within the same budget.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from ..core.errors import UserError
from ..model.adapters import LoadedModel
from . import replacement as rep
from .pruning import partial_influences

DEFAULT_BUDGET = 2 << 30  # bytes for a backward batch's working set


@dataclass
class AttributionGraph:
    """An unpruned attribution graph (see the module docstring for the node order and edge meaning)."""

    tokens: list[int]
    token_strings: list[str]
    prompt: str | None
    n_layers: int
    features: torch.Tensor  # [n_features, 3] long: layer, position, feature id
    activations: torch.Tensor  # [n_features] fp32
    logit_tokens: list[int]
    logit_strings: list[str]
    logit_probs: torch.Tensor  # [n_logits] fp32
    adjacency: torch.Tensor  # [n_features + n_logits, n_features + n_layers * P + P] fp32, targets x sources
    n_active: int  # active features before any cap
    info: dict = field(default_factory=dict)  # model, transcoders, settings

    @property
    def n_pos(self) -> int:
        return len(self.tokens)

    @property
    def n_features(self) -> int:
        return int(self.features.shape[0])

    @property
    def n_logits(self) -> int:
        return len(self.logit_tokens)

    @property
    def n_sources(self) -> int:
        return self.n_features + (self.n_layers + 1) * self.n_pos

    @property
    def n_nodes(self) -> int:
        return self.n_sources + self.n_logits

    def square(self) -> torch.Tensor:
        """The adjacency as circuit-tracer stores it: [n_nodes, n_nodes], zero rows for errors and tokens."""
        full = torch.zeros(self.n_nodes, self.n_nodes)
        full[: self.n_features, : self.n_sources] = self.adjacency[: self.n_features]
        full[self.n_sources:, : self.n_sources] = self.adjacency[self.n_features:]
        return full


def tokenize(tokenizer, prompt: str | None, prompt_ids: list[int] | None, vocab_size: int) -> list[int]:
    """Token ids as circuit-tracer makes them: the text without special tokens, then the tokenizer's
    BOS (else its pad, eos or first special token; the first nonzero id among them) prepended unless
    the first token is already a special token. Token ids get the same prefix."""
    if (prompt is None) == (prompt_ids is None):
        raise UserError("give exactly one of a prompt text (--prompt) and token ids (--prompt-ids)")
    if prompt is not None:
        if tokenizer is None:
            raise UserError("this model has no tokenizer: give the prompt as token ids (--prompt-ids)")
        ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    else:
        ids = [int(i) for i in prompt_ids]
    if not ids:
        raise UserError("the prompt is empty")
    if tokenizer is not None and ids[0] not in set(tokenizer.all_special_ids):
        candidates = [tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id,
                      *tokenizer.all_special_ids]
        first = next((c for c in candidates if c), None)  # its filter(None, ...): a 0 id is passed over
        if first is not None:
            ids = [int(first)] + ids
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise UserError(f"token id {bad[0]} is outside the model's vocabulary (0..{vocab_size - 1})")
    return ids


def check_transcoders(model: LoadedModel, tc) -> None:
    a = model.adapter
    if tc.n_layers != a.n_layers or tc.d_model != a.d_model:
        raise UserError(f"the transcoders are for {tc.n_layers} layers of width {tc.d_model}; the model has "
                        f"{a.n_layers} layers of width {a.d_model}")


def reads_pre_norm(tc) -> bool:
    return any(h in str(getattr(tc, "input_hook", "") or "") for h in rep.PRE_NORM_HOOKS)


@dataclass
class _Sources:
    """Where each source writes: per layer l, the features writing into the MLP output of l."""

    cols: list[torch.Tensor]  # per layer [n_w] column indices, sorted by position
    pos: list[torch.Tensor]  # per layer [n_w], ascending
    slot: list[torch.Tensor]  # per layer [n_w]: rank among the layer's writers at the same position
    packed: list[torch.Tensor]  # per layer [P, c_max, d] fp32: packed[pos, slot] = activation * decoder row
    errors: torch.Tensor  # [L, P, d]
    tokens: torch.Tensor  # [P, d]


def active_features(rec: rep.Recorded, tc, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(features [n, 3], activations [n], errors [L, P, d]) of the recorded run; position 0 none."""
    feats, acts = [], []
    for layer, x in enumerate(rec.tc_inputs):
        for start in range(0, x.shape[0], 256):
            a = tc.encode(layer, x[start:start + 256]).float()
            if start == 0:
                a[0] = 0
            pos, f = torch.nonzero(a, as_tuple=True)
            feats.append(torch.stack([torch.full_like(pos, layer), pos + start, f], 1))
            acts.append(a[pos, f])
    recon = tc.reconstruct(list(rec.tc_inputs))
    errors = torch.stack([m - r.float() for m, r in zip(rec.mlp_out, recon)])
    errors[:, 0] = 0
    return torch.cat(feats).to(device), torch.cat(acts).to(device), errors


def _sources(rec, tc, features, acts, errors, model) -> _Sources:
    L = len(rec.mlp_out)
    cols = [[] for _ in range(L)]
    pos = [[] for _ in range(L)]
    vecs = [[] for _ in range(L)]
    for src in range(L):
        sel = torch.nonzero(features[:, 0] == src)[:, 0]
        if not len(sel):
            continue
        dec = rep.decoder_rows(tc, src, features[sel, 2])
        dec = dec * acts[sel].view(-1, *[1] * (dec.dim() - 1))
        for dst in range(src, L if tc.cross_layer else src + 1):
            cols[dst].append(sel)
            pos[dst].append(features[sel, 1])
            vecs[dst].append(dec[:, dst - src] if tc.cross_layer else dec)
    d = model.adapter.d_model
    dev = errors.device

    def cat(parts, shape):
        return torch.cat(parts) if parts else torch.zeros(shape, device=dev)

    tok = model.adapter.token_embed(rec.ids[None])[0].float()
    P = len(rec.ids)
    packed = {"cols": [], "pos": [], "slot": [], "packed": []}
    for c, p, v in zip(cols, pos, vecs):
        c, p, v = cat(c, (0,)).long(), cat(p, (0,)).long(), cat(v, (0, d))
        order = torch.argsort(p, stable=True)
        c, p, v = c[order], p[order], v[order]
        counts = torch.bincount(p, minlength=P)
        slot = torch.arange(len(p), device=dev) - (torch.cumsum(counts, 0) - counts)[p]
        table = torch.zeros(P, int(counts.max()) if len(p) else 0, d, device=dev)
        table[p, slot] = v
        for key, value in zip(packed, (c, p, slot, table)):
            packed[key].append(value)
    return _Sources(**packed, errors=errors, tokens=tok)


class _Engine:
    """Batched transposed passes through the frozen linear replacement model."""

    def __init__(self, model: LoadedModel, tc, rec: rep.Recorded, src: _Sources, n_features: int, budget: int):
        self.model, self.tc, self.rec, self.src = model, tc, rec, src
        self.L, self.P, self.d = len(rec.mlp_out), len(rec.ids), model.adapter.d_model
        self.n_features = n_features
        self.n_cols = n_features + (self.L + 1) * self.P
        self.budget = budget
        self.pre_norm = reads_pre_norm(tc)
        dev = rec.final_resid.device
        self.skips = [rep.skip_matrix(tc, layer, dev) for layer in range(self.L)]

    def batch_rows(self, n: int) -> int:
        """How many targets one pass takes within the budget (at least one)."""
        per_target = 4 * (6 * self.P * self.d + self.n_cols + 2 * self.P * self.model.adapter.n_heads * 8)
        return max(1, min(n, self.budget // per_target))

    def rows(self, layers: torch.Tensor, positions: torch.Tensor, vecs: torch.Tensor) -> torch.Tensor:
        """Adjacency rows [B, n_cols] of targets reading vecs [B, d] at (layer, position); layer L
        means the final norm's output (a logit)."""
        B = len(layers)
        P = int(positions.max()) + 1
        dev = vecs.device
        out = torch.zeros(B, self.n_cols, device=dev)
        g = torch.zeros(B, P, self.d, device=dev)
        top = int(layers.max())
        batch = torch.arange(B, device=dev)
        at_top = layers == self.L
        if at_top.any():
            inj = torch.zeros(B, P, self.d, device=dev)
            inj[batch[at_top], positions[at_top]] = vecs[at_top]
            g = g + self.rec.norm_final.transpose(inj)
        for layer in range(min(top, self.L - 1), -1, -1):
            if layer < top:
                self._read(layer, g, out)
            gx = g @ self.skips[layer].T if self.skips[layer] is not None else None
            here = layers == layer
            if here.any():
                inj = torch.zeros(B, P, self.d, device=dev)
                inj[batch[here], positions[here]] = vecs[here]
                gx = inj if gx is None else gx + inj
            if gx is not None:
                gx = gx if self.pre_norm else self.rec.norm2[layer].transpose(gx)
            if self.model.adapter.parallel:
                ga = self.rec.norm1[layer].transpose(
                    rep.attention_transpose(self.model, layer, self.rec.patterns[layer], g))
                g = g + ga + (gx if gx is not None else 0)
            else:
                g = g + gx if gx is not None else g
                g = g + self.rec.norm1[layer].transpose(
                    rep.attention_transpose(self.model, layer, self.rec.patterns[layer], g))
        tok0 = self.n_features + self.L * self.P
        out[:, tok0:tok0 + P] = (g * self.src.tokens[:P]).sum(-1)
        return out

    def _read(self, layer: int, g: torch.Tensor, out: torch.Tensor) -> None:
        """Add every source writing into layer's MLP output: <g at its position, its write>."""
        B, P, _ = g.shape
        e0 = self.n_features + layer * self.P
        out[:, e0:e0 + P] = (g * self.src.errors[layer, :P]).sum(-1)
        pos, cols, slot, table = self.src.pos[layer], self.src.cols[layer], self.src.slot[layer], self.src.packed[layer]
        if not len(pos):
            return
        # one batched matrix product per chunk of positions: [p, B, d] x [p, d, c_max] -> [p, B, c_max]
        chunk = max(1, self.budget // (4 * 2 * B * max(table.shape[1], self.d)))
        bounds = torch.searchsorted(pos, torch.arange(0, P + chunk, chunk, device=pos.device).clamp(max=P)).tolist()
        for k, p0 in enumerate(range(0, P, chunk)):
            a, b = bounds[k], bounds[k + 1]
            if a == b:
                continue
            prod = torch.bmm(g[:, p0:p0 + chunk].transpose(0, 1), table[p0:min(p0 + chunk, P)].transpose(1, 2))
            out[:, cols[a:b]] += prod[pos[a:b] - p0, :, slot[a:b]].T


def logit_targets(rec: rep.Recorded, model: LoadedModel, desired_logit_prob: float, max_logits: int):
    """(token ids, probabilities, demeaned unembedding rows [k, d]) of the salient logits."""
    if not 0 < desired_logit_prob <= 1:
        raise UserError(f"--desired-logit-prob must be in (0, 1], not {desired_logit_prob}")
    if max_logits < 1:
        raise UserError(f"--max-logits must be at least 1, not {max_logits}")
    probs = torch.softmax(rec.logits, -1)
    top_p, top_i = torch.topk(probs, min(max_logits, probs.shape[0]))
    cut = int(torch.searchsorted(torch.cumsum(top_p, 0), torch.tensor(desired_logit_prob))) + 1
    idx = top_i[:cut]
    w = model.hf_model.get_output_embeddings().weight.detach().float()
    return idx, probs[idx], w[idx] - w.mean(0)


def attribute(model: LoadedModel, transcoders, prompt: str | None = None, *, prompt_ids: list[int] | None = None,
              desired_logit_prob: float = 0.95, max_logits: int = 10, max_feature_nodes: int | None = None,
              batch_size: int = 256, memory_budget: int = DEFAULT_BUDGET, update_interval: int = 4,
              progress: Callable[[int, int], None] | None = None) -> AttributionGraph:
    """The attribution graph of one prompt (text, or token ids) through the given transcoders.

    max_feature_nodes: attribute at most this many features, chosen as circuit-tracer does (in order
    of their influence on the logits as estimated from the rows computed so far, re-ranked every
    `update_interval` batches); the others are left out of the graph. progress(done, total) is called
    after each backward batch with counts of target rows."""
    tc = transcoders
    check_transcoders(model, tc)
    if max_feature_nodes is not None and max_feature_nodes < 0:
        raise UserError(f"--max-feature-nodes must be >= 0, not {max_feature_nodes}")
    ids = tokenize(model.tokenizer, prompt, prompt_ids, model.vocab_size)
    device = model.adapter.device
    ids_t = torch.tensor(ids, device=device)
    with torch.no_grad():
        rec = rep.record(model, ids_t, reads_pre_norm(tc))
        features, acts, errors = active_features(rec, tc, device)
        n_active = int(features.shape[0])
        src = _sources(rec, tc, features, acts, errors, model)
        logit_ids, logit_probs, logit_vecs = logit_targets(rec, model, desired_logit_prob, max_logits)
        eng = _Engine(model, tc, rec, src, n_active, memory_budget)
        L, P = eng.L, eng.P
        n_log = len(logit_ids)
        n_keep = n_active if max_feature_nodes is None else min(max_feature_nodes, n_active)
        bs = eng.batch_rows(batch_size)
        total = n_log + n_keep
        done = 0
        # the adjacency itself: feature rows first (in the order computed), then the logit rows
        rows = torch.zeros(n_keep + n_log, eng.n_cols)
        order = torch.zeros(n_keep + n_log, dtype=torch.long)  # node index of each row
        for i in range(0, n_log, bs):
            k = min(bs, n_log - i)
            rows[n_keep + i:n_keep + i + k] = eng.rows(torch.full((k,), L, device=device),
                                                       torch.full((k,), P - 1, device=device), logit_vecs[i:i + k]).cpu()
            order[n_keep + i:n_keep + i + k] = n_active + (L + 1) * P + torch.arange(i, i + k)
            done += k
            if progress:
                progress(done, total)
        visited = torch.zeros(n_active, dtype=torch.bool)
        st = 0  # feature rows done

        def encoders(idx: torch.Tensor) -> torch.Tensor:
            out = torch.empty(len(idx), eng.d, device=device)
            for layer in features[idx, 0].unique().tolist():
                sel = features[idx, 0] == layer
                out[sel] = rep.encoder_rows(tc, layer, features[idx[sel], 2])
            return out

        while st < n_keep:
            if n_keep == n_active:
                pending = torch.arange(n_active)[st:]
            else:  # rows so far: the logits', then the features' (a copy bounded by max_feature_nodes rows)
                done_rows = torch.cat([rows[n_keep:], rows[:st]])
                infl = partial_influences(done_rows, logit_probs.cpu(), torch.cat([order[n_keep:], order[:st]]),
                                          n_active + (L + 1) * P + n_log)
                del done_rows
                rank = torch.argsort(infl[:n_active], descending=True, stable=True)
                pending = rank[~visited[rank]][: min(update_interval * bs, n_keep - st)]
            for i in range(0, len(pending), bs):
                idx = pending[i:i + bs]
                idx_d = idx.to(device)
                r = eng.rows(features[idx_d, 0], features[idx_d, 1], encoders(idx_d)).cpu()
                rows[st:st + len(idx)] = r
                order[st:st + len(idx)] = idx
                visited[idx] = True
                st += len(idx)
                done += len(idx)
                if progress:
                    progress(done, total)
    selected = torch.nonzero(visited)[:, 0]
    if n_keep == n_active:  # every feature, computed in node order: the rows are the adjacency (no copy)
        adjacency = rows
    else:  # feature rows into node order, then only the kept features' columns
        rows[:n_keep] = rows[:n_keep][torch.argsort(order[:n_keep])]
        adjacency = rows[:, torch.cat([selected, torch.arange(n_active, eng.n_cols)])]
    del rows
    tok = model.tokenizer
    decode = (lambda i: tok.decode([i])) if tok is not None else str
    return AttributionGraph(
        tokens=ids, token_strings=[decode(i) for i in ids], prompt=prompt, n_layers=L,
        features=features[selected.to(device)].cpu(), activations=acts[selected.to(device)].cpu(),
        logit_tokens=[int(i) for i in logit_ids], logit_strings=[decode(int(i)) for i in logit_ids],
        logit_probs=logit_probs.cpu(), adjacency=adjacency, n_active=n_active,
        info={"desired_logit_prob": desired_logit_prob, "max_logits": max_logits,
              "max_feature_nodes": max_feature_nodes, "batch_size": bs})
